# Freeze: while a change freeze is on, nothing changes without an owner's override.
package infracrew.policy.freeze

import rego.v1

rules := {"change_freeze": {
	"enforcement": "soft-mandatory",
	"description": "While settings.freeze.active is true, any resource change is held.",
}}

violations contains v if {
	input.settings.freeze.active == true
	some r in input.resources
	r.action != "unchanged"
	v := {
		"rule": "change_freeze",
		"resource": r.resource,
		"message": sprintf(
			"a change freeze is active (reason: %v) and this plan would %v %v; expected no changes until the freeze lifts, or a policy owner's override",
			[freeze_reason, r.action, r.resource],
		),
	}
}

freeze_reason := input.settings.freeze.reason if {
	is_string(input.settings.freeze.reason)
	input.settings.freeze.reason != ""
} else := "none given"
