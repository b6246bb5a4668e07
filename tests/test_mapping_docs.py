"""README's variable table is the variable set; the shipped example mappings work."""
from __future__ import annotations

import json

from click.testing import CliRunner

from connector.cli import main
from connector.mapping import Mapping
from connector.mapping.variables import DESCRIPTIONS, schema
from conftest import FIXTURES, ROOT


def documented_names() -> set[str]:
    names = set()
    for key in DESCRIPTIONS:
        parts = [p.strip() for p in key.split("/")]
        base = parts[0].split(".")[0]
        for p in parts:
            names.add(base + p if p.startswith(".") else p)
    return names


def actual_names() -> set[str]:
    out = set()
    for name, shape in schema().items():
        if isinstance(shape, dict) and name not in ("record",):
            out |= {f"{name}.{attr}" for attr in shape}
        else:
            out.add(name)
    out |= {"record.id", "record.type"}
    out.discard("record")
    return out


def test_every_variable_is_documented_and_every_documented_one_exists():
    assert documented_names() == actual_names()


def test_readme_lists_every_variable_and_filter():
    readme = (ROOT / "README.md").read_text()
    for key, text in DESCRIPTIONS.items():
        assert text in readme, key


def test_examples_pass_check_and_preview(tmp_path):
    for crm, name in (("hubspot", "hubspot-custom-property"), ("salesforce", "salesforce-custom-object")):
        path = ROOT / "mappings" / "examples" / f"{name}.yaml"
        assert Mapping.load(path, crm).warnings == []
    run = CliRunner().invoke(main, ["preview", "--config", str(ROOT / "config.example.yaml"), "--crm", "salesforce",
                                    "--mapping", str(ROOT / "mappings/examples/salesforce-custom-object.yaml"),
                                    str(FIXTURES / "aircall" / "sms_received.json")])
    [request] = json.loads(run.stdout)
    assert request["path"] == "/services/data/v59.0/sobjects/MMS_Message__c/"
    assert request["body"]["Contact__c"] == "{who_id}" and "WhoId" not in request["body"]
    assert request["body"]["Media_Count__c"] == 0 and request["body"]["Direction__c"] == "Inbound"
    run = CliRunner().invoke(main, ["preview", "--config", str(ROOT / "config.example.yaml"), "--crm", "hubspot",
                                    "--mapping", str(ROOT / "mappings/examples/hubspot-custom-property.yaml"),
                                    str(FIXTURES / "aircall" / "sms_received.json")])
    props = json.loads(run.stdout)[0]["body"]["properties"]
    assert props["sms_media_count"] == "0" and props["sms_line"] == "Sales US (424) 416-2288"
