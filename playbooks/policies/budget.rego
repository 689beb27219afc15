# Budget: one plan may not raise the monthly bill by more than the budget allows without an owner's say-so.
package infracrew.policy.budget

import rego.v1

rules := {"budget": {
	"enforcement": "soft-mandatory",
	"description": "A plan raises the estimated monthly cost by at most settings.budget.max_monthly_increase.",
}}

violations contains v if {
	delta := input.cost.monthly_delta
	limit := input.settings.budget.max_monthly_increase
	delta > limit
	v := {
		"rule": "budget",
		"resource": sprintf("plan/%v", [input.plan.plan_id]),
		"message": sprintf(
			"the plan raises the monthly cost by %v %v; expected at most %v %v: shrink the change or get a budget owner's override",
			[delta, input.cost.currency, limit, input.cost.currency],
		),
	}
}
