# Resources: every running service declares what it needs and what it may use, so the host can schedule it.
package infracrew.policy.resources

import rego.v1

rules := {"resources_set": {
	"enforcement": "hard-mandatory",
	"description": "CPU and memory requests and limits are all set above zero, and each limit is at least its request.",
}}

amounts := ["cpu_request_millis", "cpu_limit_millis", "memory_request_mib", "memory_limit_mib"]

pairs := [
	{"request": "cpu_request_millis", "limit": "cpu_limit_millis"},
	{"request": "memory_request_mib", "limit": "memory_limit_mib"},
]

violations contains v if {
	some r in input.resources
	r.after != null
	not usable(r.after.resources)
	declared := declared_resources(r.after)
	problems := amount_problems(declared) | order_problems(declared)
	v := {
		"rule": "resources_set",
		"resource": r.resource,
		"message": sprintf("resource requests and limits are not usable: %v", [concat("; ", problems)]),
	}
}

# Decides the rule on its own; the problem lists below only explain a failure, and run only then.
usable(declared) if {
	is_number(declared.cpu_request_millis)
	is_number(declared.memory_request_mib)
	declared.cpu_request_millis > 0
	declared.memory_request_mib > 0
	is_number(declared.cpu_limit_millis)
	is_number(declared.memory_limit_mib)
	declared.cpu_limit_millis >= declared.cpu_request_millis
	declared.memory_limit_mib >= declared.memory_request_mib
}

declared_resources(after) := after.resources if {
	is_object(after.resources)
} else := {}

amount_problems(declared) := {msg |
	some field in amounts
	found := object.get(declared, field, "missing")
	not positive(found)
	msg := sprintf("resources.%v is %v, expected a number greater than 0", [field, found])
}

order_problems(declared) := {msg |
	some pair in pairs
	request := declared[pair.request]
	limit := declared[pair.limit]
	positive(request)
	positive(limit)
	limit < request
	msg := sprintf(
		"resources.%v is %v, below resources.%v %v; expected the limit to be at least the request",
		[pair.limit, limit, pair.request, request],
	)
}

positive(x) if {
	is_number(x)
	x > 0
}
