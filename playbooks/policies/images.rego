# Images: every running service names an image that cannot silently change underneath it.
package infracrew.policy.images

import rego.v1

rules := {"image_pinned": {
	"enforcement": "hard-mandatory",
	"description": "Each service image is pinned to a version tag other than latest, or to a sha256 digest.",
}}

violations contains v if {
	some r in input.resources
	r.after != null
	not pinned(r.after)
	v := {
		"rule": "image_pinned",
		"resource": r.resource,
		"message": sprintf(
			"image is %v; expected a version tag other than latest (e.g. infracrew/%v:1.4.0) or a digest (<image>@sha256:<64 hex>)",
			[object.get(r.after, "image", "missing"), r.service],
		),
	}
}

# String built-ins rather than regex.match: regorus compiles a pattern on every call, which
# would dominate the cost of judging a plan.
pinned(after) if {
	is_string(after.image)
	not contains(after.image, "@")
	# A registry port (registry:5000/name) is not a tag: only the last path segment carries one.
	segments := split(after.image, "/")
	parts := split(segments[count(segments) - 1], ":")
	count(parts) == 2
	parts[0] != ""
	not parts[1] in {"", "latest"}
}

pinned(after) if {
	is_string(after.image)
	parts := split(after.image, "@sha256:")
	count(parts) == 2
	parts[0] != ""
	count(parts[1]) == 64
	trim(parts[1], "0123456789abcdef") == ""
}
