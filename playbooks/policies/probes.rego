# Probes: every running service tells the platform how to know it is alive and ready for traffic.
package infracrew.policy.probes

import rego.v1

rules := {"probes_set": {
	"enforcement": "hard-mandatory",
	"description": "Each service declares liveness and readiness probe paths (health.live and health.ready), each starting with /.",
}}

probes := ["live", "ready"]

violations contains v if {
	some r in input.resources
	r.after != null
	not usable(r.after.health)
	health := declared_health(r.after)
	problems := {msg |
		some probe in probes
		found := object.get(health, probe, "missing")
		not probe_path(found)
		msg := sprintf("health.%v is %v, expected a path starting with / (e.g. /health/%v)", [probe, found, probe])
	}
	v := {
		"rule": "probes_set",
		"resource": r.resource,
		"message": sprintf("health probes are not usable: %v", [concat("; ", problems)]),
	}
}

# Decides the rule on its own; the problem list only explains a failure, and runs only then.
usable(health) if {
	is_string(health.live)
	is_string(health.ready)
	startswith(health.live, "/")
	startswith(health.ready, "/")
}

declared_health(after) := after.health if {
	is_object(after.health)
} else := {}

probe_path(p) if {
	is_string(p)
	startswith(p, "/")
}
