"""--overrides FILE.toml and the [overrides] table of a config file (issue 18 item 3)."""

from __future__ import annotations

import json

import pytest

from qaudit.cli.main import build_parser
from qaudit.cli.settings import resolve

from ..conftest import SAMPLE_CALIB, SAMPLE_EVAL, SAMPLE_MODEL

T = "/block2/relu/Relu_output_0"
TABLE = f'[overrides.tensors."{T}"]\ntype = "uint16"\n[overrides.nodes."/fc2/*"]\nsymmetric = true\n'


def _settings(tmp_path, *argv):
    args = vars(build_parser().parse_args([str(SAMPLE_MODEL), "--calib", str(SAMPLE_CALIB), *argv]))
    return resolve("audit", {k: v for k, v in args.items() if k not in ("debug", "no_progress")}, {}, tmp_path)


def test_the_file_and_the_config_table_give_the_same_overrides(tmp_path):
    want = {"tensors": {T: {"type": "uint16"}}, "nodes": {"/fc2/*": {"symmetric": True}}}
    (tmp_path / "ov.toml").write_text(TABLE)
    assert _settings(tmp_path, "--overrides", "ov.toml").audit_config().quant.overrides == want
    (tmp_path / "ov.toml").write_text(TABLE.replace("[overrides.", "["))  # the file's top level is the table
    assert _settings(tmp_path, "--overrides", "ov.toml").audit_config().quant.overrides == want
    (tmp_path / "pyproject.toml").write_text(TABLE.replace("[overrides.", "[tool.qaudit.overrides."))
    assert _settings(tmp_path).audit_config().quant.overrides == want
    assert _settings(tmp_path).audit_config().quant.sixteen_bit  # qaudit upgrades the opset to 21


@pytest.mark.parametrize(
    "table, message",
    [
        (
            '[overrides.tensors."/block2/relu/Relu_output_9"]\ntype = "uint16"\n',
            "did you mean '/block2/relu/Relu_output_0'",
        ),
        ('[overrides.tensors."/fc2/*"]\ntype = "uint16"\n', "matches a node: move it to overrides.nodes"),
        ('[overrides.tensors."x"]\nsymetric = true\n', "unknown key 'symetric' (did you mean 'symmetric'?)"),
        ('[overrides.tensors."x"]\nrmin = "low"\nrmax = 1\n', "rmin must be a finite number, not 'low'"),
    ],
)
def test_bad_overrides_exit_2_in_one_line(run_cli, tmp_path, table, message):
    (tmp_path / "ov.toml").write_text(table)
    argv = [str(SAMPLE_MODEL), "--calib", str(SAMPLE_CALIB), "--overrides", str(tmp_path / "ov.toml")]
    p = run_cli(*argv, "--json", str(tmp_path / "r.json"))
    assert p.returncode == 2, p.stderr
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "r.json").exists()


def test_audit_marks_the_overridden_rows(run_cli, tmp_path):
    (tmp_path / "ov.toml").write_text(TABLE)
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    argv = [str(SAMPLE_MODEL), "--calib", str(SAMPLE_CALIB), "--eval", str(SAMPLE_EVAL)]
    p = run_cli(*argv, "--overrides", str(tmp_path / "ov.toml"), "--json", str(out), "--markdown", str(md))
    assert p.returncode == 0, p.stderr
    d = json.loads(out.read_text())
    assert d["settings"]["overrides"] == {"tensors": {T: {"type": "uint16"}}, "nodes": {"/fc2/*": {"symmetric": True}}}
    marked = {r["name"]: r["override"] for r in d["layers"] if r.get("override")}
    assert marked == {"/block2/relu/Relu": {T: {"type": "uint16"}}, "/fc2/Gemm": {"logits": {"symmetric": True}}}
    assert next(r for r in d["layers"] if r["name"] == "/fc2/Gemm")["zero_point"] == 128  # symmetric uint8
    assert "[override: uint16]" in p.stdout
