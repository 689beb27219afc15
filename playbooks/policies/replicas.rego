# Replicas: production keeps enough copies to survive losing one, and big swings in capacity get a second look.
package infracrew.policy.replicas

import rego.v1

rules := {
	"prod_min_replicas": {
		"enforcement": "soft-mandatory",
		"description": "In a production environment each service runs at least settings.min_prod_replicas replicas.",
	},
	"large_scale_change": {
		"enforcement": "advisory",
		"description": "A change that doubles or halves a running service's replicas (or more) in one step.",
	},
}

violations contains v if {
	input.environment in input.settings.prod_environments
	minimum := input.settings.min_prod_replicas
	some r in input.resources
	r.after != null
	found := object.get(r.after, "replicas", "missing")
	not at_least(found, minimum)
	v := {
		"rule": "prod_min_replicas",
		"resource": r.resource,
		"message": sprintf(
			"replicas is %v in production environment %v; expected at least %v so the service survives losing one",
			[found, input.environment, minimum],
		),
	}
}

violations contains v if {
	some r in input.resources
	r.before != null
	r.after != null
	before := r.before.replicas
	after := r.after.replicas
	is_number(before)
	is_number(after)
	before > 0
	large_swing(before, after)
	v := {
		"rule": "large_scale_change",
		"resource": r.resource,
		"message": sprintf(
			"replicas go from %v to %v in one change, at least doubling or halving capacity; consider stepping gradually and watching load",
			[before, after],
		),
	}
}

at_least(found, minimum) if {
	is_number(found)
	found >= minimum
}

large_swing(before, after) if after >= 2 * before

large_swing(before, after) if after * 2 <= before
