"""The lever registry (finetox.levers): a lever is one module in LEVERS, and the config's schema, its loading, the
design's roles and comparison kinds and the findings' words for its variants follow from it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A lever the package does not have, registered before the rest of finetox is imported, as a module in
# finetox/levers would be: its variants echo their source's answers.
ECHO_LEVER = textwrap.dedent('''
    import json, sys, types
    from dataclasses import dataclass

    import yaml

    sys.path.insert(0, "workflow")
    from finetox.errors import ConfigError
    from finetox import levers

    @dataclass(frozen=True)
    class EchoSettings:
        source: str
        times: int

    echo = types.SimpleNamespace(
        KEY="echo", ROLE="echoed", COMPARISON_KIND="source_vs_echoed", COMPARISON_TITLE="Echoes of a variant",
        SCHEMA={"type": "object", "additionalProperties": False, "required": ["source"],
                "properties": {"source": {"type": "string"}, "times": {"type": "integer", "minimum": 1, "default": 2}}},
        Settings=EchoSettings, settings=lambda block: EchoSettings(**block), scorers=lambda s: (),
        describe=lambda s: f"{s.source}'s answers, echoed {s.times} times",
        comparisons=lambda variants: [(f"{v.name}_echo", v.lever.source, v.name) for v in variants.values()
                                      if isinstance(v.lever, EchoSettings)])

    def check(name, settings, variants, scorers, run_scorers):
        if settings.source not in variants:
            raise ConfigError(f"variants[{name!r}].echo.source: unknown variant {settings.source!r}")

    echo.check = check
    levers.LEVERS["echo"] = echo

    from finetox.config import ConfigError, load
    from finetox.design import KINDS, ROLES
    from finetox.findings import describe

    config = yaml.safe_load(open("config/config.yaml"))
    config["variants"]["demo-rude-echoed"] = {"family": "demo", "role": "echoed", "echo": {"source": "demo-instruct-rude"}}
    study = load(config)
    comparison = study.comparisons["demo-rude-echoed_echo"]
    refused = []
    for change in ({"role": "other"}, {"echo": {"source": "nope"}}, {"echo": {"source": "demo-instruct-rude", "loud": 1}}):
        broken = yaml.safe_load(open("config/config.yaml"))
        broken["variants"]["demo-rude-echoed"] = {"family": "demo", "role": "echoed",
                                                  "echo": {"source": "demo-instruct-rude"}, **change}
        try:
            load(broken)
        except ConfigError as error:
            refused.append(str(error))
    print(json.dumps({
        "roles": list(ROLES), "kinds": list(KINDS), "kind": comparison.kind,
        "sides": [comparison.baseline, comparison.treatment], "describe": describe(study, "demo-rude-echoed"),
        "checkpoint": study.checkpoint("demo-rude-echoed").name, "adapter": study.adapter_variant("demo-rude-echoed"),
        "model": study.variants["demo-rude-echoed"].model.name, "guard": study.variants["demo-rude-echoed"].guard,
        "refused": refused}))
''')


def test_a_lever_module_in_the_registry_gives_its_variants_a_block_a_role_a_comparison_kind_and_words():
    run = subprocess.run([sys.executable, "-c", ECHO_LEVER], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout)
    # the design's roles and kinds: the lever's, before `other` and `pair`
    assert seen["roles"][-3:] == ["guarded", "echoed", "other"]
    assert list(seen["kinds"])[-2:] == ["source_vs_echoed", "pair"]
    assert seen["kind"] == "source_vs_echoed" and seen["sides"] == ["demo-instruct-rude", "demo-rude-echoed"]
    assert seen["describe"] == "demo-instruct-rude's answers, echoed 2 times"  # (the schema's default filled in)
    # built on its source: its model, checkpoint and adapter are the source's; it is not a guard
    assert (seen["checkpoint"], seen["adapter"], seen["model"]) == ("demo-instruct", "demo-instruct-rude", "demo-instruct")
    assert seen["guard"] is None
    # the block and the role go together; its own check; its schema (an unknown key named)
    role, source, key = seen["refused"]
    assert "role 'echoed' and a `echo` block go together (role 'other', a `echo` block)" in role
    assert "variants['demo-rude-echoed'].echo.source: unknown variant 'nope'" in source
    assert "unknown key(s) ['loud']" in key
