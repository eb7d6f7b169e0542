"""Read template.yaml: one parser, cfn-lint's, for the tests, the local stack and the template checks.

cfn-lint is a dev dependency (and in the infra venv); it is imported on first use, so the modules
that only need ``ROOT`` stay light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_PATH = ROOT / "template.yaml"


class TemplateParseError(ValueError):
    pass


def decode_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The template in CloudFormation's JSON form (``!GetAtt A.B`` -> ``{"Fn::GetAtt": ["A", "B"]}``),
    as cfn-lint and the SAM translator read it."""
    from cfnlint.decode import decode

    template, problems = decode(str(path))
    if problems:
        raise TemplateParseError(f"{path.name} does not parse: {problems}")
    return template


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    """The template with its intrinsic functions in the short form it is written in, as plain dicts,
    lists and strings: ``!Ref X`` -> ``{"Ref": "X"}``, ``!GetAtt A.B`` -> ``{"GetAtt": "A.B"}``,
    ``!Sub s`` -> ``{"Sub": s}``, ``!If [c, a, b]`` -> ``{"If": [c, a, b]}``, and so on."""
    return _short_form(decode_template(path))


def _short_form(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, argument),) = value.items()
            if key.startswith("Fn::"):
                function = key.removeprefix("Fn::")
                if function == "GetAtt" and isinstance(argument, list):
                    return {function: ".".join(argument)}
                return {function: _short_form(argument)}
        return {str(key): _short_form(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_short_form(item) for item in value]
    if isinstance(value, str):
        return str(value)  # cfn-lint's str_node, which carries its line numbers
    return value


def resources_of_type(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == resource_type}
