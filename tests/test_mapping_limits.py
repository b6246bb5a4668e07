"""A template cannot hang `check` or a worker, nor eat its memory: loops, widths and the
text a render builds are bounded, and each refusal names the field."""
from __future__ import annotations

import threading
import time

import pytest

from connector.mapping import RenderError
from connector.mapping.reload import LiveMapping
from test_mapping_check import SALESFORCE, errors_of
from test_mapping_reload import edit
from test_mapping_render import ctx, load

FAILS = "F:3:18: entries.inbound.Description fails on the sample inbound MMS: "


def description(template: str) -> str:
    return 'entries:\n  inbound:\n    Description: "' + template + '"\n  outbound: {}\n  status: {}\n'


@pytest.mark.parametrize("template,error", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "range() of 100000 numbers is too long (at most 10000)"),
    ("{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
     "too many loop iterations (over 100000 in one render)"),
    ("{{ ''|center(800000000)|truncate(10) }}", "center: 800000000 is too large (at most 100000)"),
    ("{{ '%800000000s'|format('') }}", "format: width 800000000 is too large (at most 100000)"),
    ("{{ '%800000000s' % '' }}", "format: width 800000000 is too large (at most 100000)"),
    ("{{ '{:>800000000}'.format('') }}", "format: width 800000000 is too large (at most 100000)"),
    ("{{ ''.ljust(800000000) }}", "ljust: 800000000 is too large (at most 100000)"),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
     "result too long (over 1000000 characters)"),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
     "result too long (over 1000000 characters)"),
    ("{{ range(10000)|join('x' * 100000) }}", "result too long (over 1000000 characters)"),
    ("{{ ('a' * 100000)|replace('a', 'a' * 1000) }}", "result too long (over 1000000 characters)"),
    ("{% set a = ['x' * 100000] %}{% set b = [a, a, a, a, a, a, a, a, a, a, a] %}{{ [b, b] }}",
     "result too long (over 1000000 characters)"),
    ("{% for i in range(5000) %}{{ 'y' * 1000 }}{% endfor %}", "rendered value too long (over 1000000 characters)"),
])
def test_costly_templates_are_refused_quickly_with_the_field(tmp_path, template, error):
    start = time.monotonic()
    assert errors_of(tmp_path, description(template), "salesforce") == [FAILS + error]
    assert time.monotonic() - start < 5


def test_a_message_that_makes_a_valid_template_loop_too_much_fails_alone(tmp_path):
    m = load(tmp_path, "salesforce", description(
        "{% for a in message.text %}{% for b in message.text %}{% endfor %}{% endfor %}ok"))
    assert m.render("inbound", ctx())["Description"] == "ok"  # 39 characters: 1521 iterations
    long = ctx()
    long["message"] = dict(long["message"], text="x" * 1000)
    with pytest.raises(RenderError) as info:
        m.render("inbound", long)
    assert info.value.errors == [f"{tmp_path / 'salesforce.yaml'}:3:18: entries.inbound.Description: "
                                 "too many loop iterations (over 100000 in one render)"]
    assert m.render("inbound", ctx())["Description"] == "ok"  # the budget is per render


def test_recursive_loops_and_unbounded_methods_are_refused(tmp_path):
    assert errors_of(tmp_path, description("{% for m in media recursive %}{{ m.name }}{% endfor %}"),
                     "salesforce") == ["F:3:37: recursive loops are not allowed"]
    assert errors_of(tmp_path, description("{{ message.text.expandtabs(100000) }}"), "salesforce") == [
        FAILS + "access to attribute 'expandtabs' of 'str' object is unsafe."]


def test_reload_of_a_costly_edit_returns_and_keeps_the_last_good_mapping(tmp_path):
    path = tmp_path / "salesforce.yaml"
    edit(path, SALESFORCE)
    live = LiveMapping(path, "salesforce")
    good = live()
    edit(path, SALESFORCE.replace('"{{ body_text }}"', '"{% for i in range(10000) %}{% for j in range(10000) %}'
                                  '{% endfor %}{% endfor %}{{ body_text }}"', 1))
    got = []
    t = threading.Thread(target=lambda: got.append(live()), daemon=True)
    t.start()
    t.join(10)
    assert got == [good]
    assert "too many loop iterations" in live.last_error.errors[0]
