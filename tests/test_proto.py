"""The wire contract: generated stubs are fresh, importable without torch, and every rpc and field is commented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto" / "gpunet" / "nas" / "v1" / "controller.proto"
GENERATED = ("controller_pb2.py", "controller_pb2.pyi", "controller_pb2_grpc.py")


def test_generated_stubs_match_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), "--out", str(tmp_path)], check=True, capture_output=True)
    for name in GENERATED:
        fresh = (tmp_path / name).read_text()
        committed = (ROOT / "gpunet" / "rpc" / name).read_text()
        assert fresh == committed, f"gpunet/rpc/{name} is stale: run `python proto/generate.py`"


def test_stubs_import_without_torch() -> None:
    code = (
        "import sys\n"
        "from gpunet import rpc\n"
        "from gpunet.spec import load_spec\n"
        "s = rpc.pb.SearchStatus(phase=rpc.pb.SEARCH_PHASE_SEARCHING)\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
        "print(rpc.phase_name(s.phase))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "Searching"


def test_phase_names_are_the_camel_case_of_the_proto_enum_and_round_trip() -> None:
    from gpunet import rpc
    from gpunet.errors import GpunetError

    assert rpc.PHASES == ("Pending", "Profiling", "Stratifying", "Searching", "Succeeded", "Failed", "Finalizing", "Scaling")
    assert rpc.phase_name(rpc.pb.SEARCH_PHASE_PROFILING) == "Profiling"
    assert rpc.phase_name(rpc.pb.SEARCH_PHASE_UNSPECIFIED) == ""
    for name in rpc.PHASES:
        assert rpc.phase_name(rpc.phase_value(name)) == name
        assert rpc.pb.SearchPhase.Name(rpc.phase_value(name)) == "SEARCH_PHASE_" + name.upper()
    assert rpc.TERMINAL_PHASES == {"Succeeded", "Failed"}
    assert rpc.ACTIVE_PHASES == {"Pending", "Profiling", "Stratifying", "Searching", "Scaling", "Finalizing"}
    assert not rpc.TERMINAL_PHASES & rpc.ACTIVE_PHASES and rpc.TERMINAL_PHASES | rpc.ACTIVE_PHASES == set(rpc.PHASES)
    with pytest.raises(GpunetError, match=r"phase: got 'profiling'; expected one of \['Pending', 'Profiling'"):
        rpc.phase_value("profiling")
    with pytest.raises(GpunetError, match=r"SearchStatus.phase: got 99"):
        rpc.phase_name(99)


def test_a_status_from_a_newer_controller_with_an_unknown_phase_still_parses() -> None:
    from gpunet import rpc

    wire = rpc.pb.SearchStatus(phase=rpc.pb.SEARCH_PHASE_SEARCHING, search_name="x").SerializeToString()
    newer = bytearray(wire)
    newer[newer.index(bytes([14 << 3, rpc.pb.SEARCH_PHASE_SEARCHING]))  + 1] = 9  # a phase number this version lacks
    status = rpc.pb.SearchStatus.FromString(bytes(newer))
    assert status.phase == 9 and status.search_name == "x"


def test_every_rpc_message_and_field_is_commented() -> None:
    lines = PROTO.read_text().splitlines()
    declaration = re.compile(r"^\s*(rpc|message|enum|service|oneof)\s|^\s*(repeated\s+)?[\w.]+\s+\w+\s*=\s*\d+;")
    uncommented = [line.strip() for i, line in enumerate(lines) if declaration.match(line) and not lines[i - 1].strip().startswith("//")]
    assert uncommented == []


def test_package_is_versioned_with_one_service() -> None:
    text = PROTO.read_text()
    assert re.search(r"^package gpunet\.nas\.v1;", text, re.M)
    assert re.findall(r"^service (\w+)", text, re.M) == ["SearchControllerService"]
