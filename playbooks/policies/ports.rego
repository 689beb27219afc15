# Ports: services listen and publish only on the ports the service catalog assigns them, so they never collide.
package infracrew.policy.ports

import rego.v1

rules := {"catalog_ports_only": {
	"enforcement": "hard-mandatory",
	"description": "A service is in the catalog, listens on its catalog port and publishes, if at all, on that same port.",
}}

violations contains v if {
	some r in input.resources
	r.after != null
	not input.catalog[r.service].port
	v := {
		"rule": "catalog_ports_only",
		"resource": r.resource,
		"message": sprintf(
			"service %v has no port in the service catalog; expected a catalog entry with its port before it is deployed",
			[r.service],
		),
	}
}

violations contains v if {
	some r in input.resources
	r.after != null
	expected := input.catalog[r.service].port
	not on_catalog_port(r.after, expected)
	problems := {msg |
		some field in ["port", "published_port"]
		found := object.get(r.after, field, "missing")
		not allowed(field, found, expected)
		msg := sprintf("%v is %v, expected the catalog port %v for %v", [field, found, expected, r.service])
	}
	v := {
		"rule": "catalog_ports_only",
		"resource": r.resource,
		"message": concat("; ", problems),
	}
}

# Decides the rule on its own; the problem list above only explains a failure, and runs only then.
on_catalog_port(after, expected) if {
	after.port == expected
	object.get(after, "published_port", null) in {null, expected}
}

allowed("port", found, expected) if found == expected

# Publishing is optional, but only on the catalog port.
allowed("published_port", found, expected) if found in {"missing", null, expected}
