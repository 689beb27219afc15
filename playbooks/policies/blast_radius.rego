# Blast radius: one plan changes few enough services that a bad change stays contained and easy to roll back.
package infracrew.policy.blast_radius

import rego.v1

rules := {"blast_radius": {
	"enforcement": "hard-mandatory",
	"description": "A plan changes at most settings.max_services_per_plan resources.",
}}

violations contains v if {
	changed := count([r | some r in input.resources; r.action != "unchanged"])
	limit := input.settings.max_services_per_plan
	changed > limit
	v := {
		"rule": "blast_radius",
		"resource": sprintf("plan/%v", [input.plan.plan_id]),
		"message": sprintf(
			"the plan changes %v services; expected at most %v per plan: split it into smaller plans",
			[changed, limit],
		),
	}
}
