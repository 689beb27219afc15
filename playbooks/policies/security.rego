# Security: a service never gets more of the host than its own container.
package infracrew.policy.security

import rego.v1

rules := {
	"no_privileged": {
		"enforcement": "hard-mandatory",
		"description": "No service runs as a privileged container.",
	},
	"no_host_network": {
		"enforcement": "hard-mandatory",
		"description": "No service joins the host's network namespace.",
	},
}

violations contains v if {
	some r in input.resources
	r.after != null
	r.after.privileged == true
	v := {
		"rule": "no_privileged",
		"resource": r.resource,
		"message": "privileged is true; expected false or absent: a privileged container can take over the host",
	}
}

violations contains v if {
	some r in input.resources
	r.after != null
	r.after.host_network == true
	v := {
		"rule": "no_host_network",
		"resource": r.resource,
		"message": "host_network is true; expected false or absent: the service must use its own network namespace",
	}
}
