from __future__ import annotations

import copy

from kelemetry_py.sources.diffcache import Change
from kelemetry_py.sources.differ import attribute, compute_diff, render_change, summarize_managers


def _deployment() -> dict[str, object]:
    return {
        "metadata": {
            "name": "web",
            "resourceVersion": "1",
            "generation": 1,
            "annotations": {"a/b": "1"},
            "managedFields": [{"manager": "kubectl", "time": "2026-01-01T00:00:00Z"}],
        },
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "sidecar", "image": "envoy:1"},
                        {"name": "nginx", "image": "nginx:1.25", "env": [{"name": "A", "value": "x"}]},
                    ]
                }
            },
        },
        "status": {
            "conditions": [
                {"type": "Progressing", "status": "True"},
                {"type": "Available", "status": "False"},
            ]
        },
    }


def test_scalar_change_renders_old_and_new() -> None:
    old = _deployment()
    new = copy.deepcopy(old)
    new["spec"]["replicas"] = 4  # type: ignore[index]
    changes = compute_diff(old, new)
    assert changes == [Change("spec.replicas", "change", 2, 4)]
    assert render_change(changes[0]) == "spec.replicas 2 -> 4"


def test_named_list_items_are_matched_by_name_not_position() -> None:
    old = _deployment()
    new = copy.deepcopy(old)
    containers = new["spec"]["template"]["spec"]["containers"]  # type: ignore[index]
    containers.reverse()  # reordering alone is no change worth showing per field
    containers[0]["image"] = "nginx:1.26"
    lines = [render_change(c) for c in compute_diff(old, new)]
    assert lines == ['spec.template.spec.containers[nginx].image "nginx:1.25" -> "nginx:1.26"']


def test_conditions_are_matched_by_type() -> None:
    old = _deployment()
    new = copy.deepcopy(old)
    new["status"]["conditions"] = [  # type: ignore[index]
        {"type": "Available", "status": "True"},
        {"type": "Progressing", "status": "True"},
    ]
    lines = [render_change(c) for c in compute_diff(old, new)]
    assert lines == ['status.conditions[Available].status "False" -> "True"']


def test_odd_keys_are_quoted_and_adds_removes_are_readable() -> None:
    old = _deployment()
    new = copy.deepcopy(old)
    new["metadata"]["annotations"] = {"a/b": "2", "new.io/x": "y"}  # type: ignore[index]
    env = new["spec"]["template"]["spec"]["containers"][1]["env"]  # type: ignore[index]
    env.clear()
    env.append({"name": "B", "value": "z"})
    lines = [render_change(c) for c in compute_diff(old, new)]
    assert 'metadata.annotations["a/b"] "1" -> "2"' in lines
    assert 'metadata.annotations["new.io/x"] added "y"' in lines
    assert 'spec.template.spec.containers[nginx].env[A] removed (was {"name":"A","value":"x"})' in lines
    assert 'spec.template.spec.containers[nginx].env[B] added {"name":"B","value":"z"}' in lines


def test_bookkeeping_never_shows_but_generation_does() -> None:
    old = _deployment()
    new = copy.deepcopy(old)
    new["metadata"]["resourceVersion"] = "2"  # type: ignore[index]
    new["metadata"]["managedFields"] = [{"manager": "other", "time": "2026-01-02T00:00:00Z"}]  # type: ignore[index]
    assert compute_diff(old, new) == []
    new["metadata"]["generation"] = 2  # type: ignore[index]
    assert [c.path for c in compute_diff(old, new)] == ["metadata.generation"]


def test_attribution_prefers_the_owner_of_the_changed_field() -> None:
    spec_owner = {
        "manager": "kubectl-client-side-apply",
        "operation": "Update",
        "time": "2026-01-01T00:00:00Z",
        "fieldsV1": {"f:spec": {"f:replicas": {}}},
    }
    status_owner = {
        "manager": "kube-controller-manager",
        "operation": "Update",
        "subresource": "status",
        "time": "2026-01-01T00:00:09Z",
        "fieldsV1": {"f:status": {"f:replicas": {}}},
    }
    obj = {"metadata": {"managedFields": [spec_owner, status_owner]}}
    assert attribute((), obj, [["spec", "replicas"]]) == ("kubectl-client-side-apply", "Update")
    assert attribute((), obj, [["status", "replicas"]]) == ("kube-controller-manager", "Update")


def test_equal_manager_entries_share_one_summary_and_odd_values_are_summarised_as_text() -> None:
    def pod(manager: object, time: object) -> dict[str, object]:
        entry = {"manager": manager, "operation": "Update", "time": time, "fieldsV1": {"f:status": {}}}
        return {"metadata": {"managedFields": [entry, "not an entry"]}}

    first = summarize_managers(pod("kubelet", "2026-12-01T10:00:00Z"))
    second = summarize_managers(pod("kube" + "let", "2026-12-01T10:00:00Z"))
    assert first == (("kubelet", "Update", "", "2026-12-01T10:00:00Z"),)
    assert first[0] is second[0]  # one tuple for every object whose entry reads the same
    assert summarize_managers(pod(["a"], 7)) == (("['a']", "Update", "", "7"),)
    assert summarize_managers(pod(["a"], 7)) == summarize_managers(pod(["a"], 7))


def test_items_keep_their_key_only_while_both_lists_are_matched_by_it() -> None:
    old = {"spec": {"items": [{"type": "A", "v": 1}, {"type": "B", "v": 1}]}}
    same_items = {"spec": {"items": [{"type": "A", "v": 1}, {"type": "B", "v": 2}]}}
    assert [render_change(c) for c in compute_diff(old, same_items)] == ["spec.items[B].v 1 -> 2"]
    # The new items gained distinct names, which match before types: the lists no longer share a key, and are
    # compared by position, although each item kept its type.
    named = {"spec": {"items": [{"type": "A", "name": "x", "v": 1}, {"type": "B", "name": "y", "v": 2}]}}
    assert [render_change(c) for c in compute_diff(old, named)] == [
        'spec.items[0].name added "x"',
        'spec.items[1].name added "y"',
        "spec.items[1].v 1 -> 2",
    ]


def test_a_long_value_is_cut_to_the_rendered_limit_and_a_short_one_beside_it_is_not() -> None:
    long_text = "x" * 400
    rendered = render_change(Change("data.blob", "change", long_text, "short"))
    old, new = rendered.removeprefix("data.blob ").split(" -> ")
    assert old == '"' + "x" * 298 + "…" and len(old) == 300
    assert new == '"short"'
    rendered = render_change(Change("data.blob", "add", None, long_text))
    assert rendered == "data.blob added " + old
