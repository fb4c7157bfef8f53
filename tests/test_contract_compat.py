"""The contract may grow but not break: proto/ against the last released one.

proto/released/gradserve.v1.binpb is the FileDescriptorSet of the last release
(scripts/snapshot_contract.sh writes it). A field removed, renumbered, renamed or retyped, a
message, enum value or RPC removed, an RPC's streaming changed, or its request or response
type replaced by one of another wire form: clients built from the released proto would break, so
CI fails. An RPC's type may be renamed when the new message has the old one's fields (same
numbers, names and types, so the same bytes and JSON). Adding is always fine. The checker below
runs everywhere; `buf breaking` (PyPI's buf-bin, the rules in buf.yaml) runs the same comparison
when installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2 as d
from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
RELEASED = ROOT / "proto" / "released" / "gradserve.v1.binpb"
FIELD = d.FieldDescriptorProto


def compile_contract(tmp_path: Path) -> Path:
    """The current proto/ as a FileDescriptorSet file (imports included, like the baseline)."""
    out = tmp_path / "current.binpb"
    well_known = resources.files("grpc_tools") / "_proto"
    sources = sorted(
        str(p.relative_to(ROOT / "proto")) for p in ROOT.glob("proto/gradserve/**/*.proto")
    )
    args = [
        "protoc",
        "-I",
        str(ROOT / "proto"),
        f"-I{well_known}",
        "--include_imports",
        f"--descriptor_set_out={out}",
        *sources,
    ]
    assert protoc.main(args) == 0, "protoc failed on proto/"
    return out


def load(path: Path) -> d.FileDescriptorSet:
    return d.FileDescriptorSet.FromString(path.read_bytes())


# ---- the checker ----------------------------------------------------------------------------


def _messages(
    prefix: str, messages: Iterator[d.DescriptorProto] | list[d.DescriptorProto]
) -> Iterator[tuple[str, d.DescriptorProto]]:
    for message in messages:
        name = f"{prefix}.{message.name}"
        yield name, message
        yield from _messages(name, list(message.nested_type))


Index = tuple[
    dict[str, d.DescriptorProto],
    dict[str, d.EnumDescriptorProto],
    dict[str, d.ServiceDescriptorProto],
]


def _index(descriptors: d.FileDescriptorSet) -> Index:
    messages: dict[str, d.DescriptorProto] = {}
    enums: dict[str, d.EnumDescriptorProto] = {}
    services: dict[str, d.ServiceDescriptorProto] = {}
    for file in descriptors.file:
        for name, message in _messages(file.package, list(file.message_type)):
            messages[name] = message
            for enum in message.enum_type:
                enums[f"{name}.{enum.name}"] = enum
        for enum in file.enum_type:
            enums[f"{file.package}.{enum.name}"] = enum
        for service in file.service:
            services[f"{file.package}.{service.name}"] = service
    return messages, enums, services


def _field_shape(field: d.FieldDescriptorProto) -> str:
    label = "repeated" if field.label == FIELD.LABEL_REPEATED else "singular"
    presence = " optional" if field.proto3_optional else ""
    kind = field.type_name or FIELD.Type.Name(field.type)
    return f"{label}{presence} {kind}"


def _oneof(message: d.DescriptorProto, field: d.FieldDescriptorProto) -> str | None:
    return message.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None


def _field_changes(name: str, old: d.DescriptorProto, new: d.DescriptorProto) -> list[str]:
    """How `new` reads the fields of `old` differently on the wire; [] when it only adds."""
    problems: list[str] = []
    new_fields = {f.number: f for f in new.field}
    numbers_by_name = {f.name: f.number for f in new.field}
    for field in old.field:
        where = f"{name}.{field.name} (= {field.number})"
        current = new_fields.get(field.number)
        if current is None:
            moved = numbers_by_name.get(field.name)
            problems.append(
                f"field {where} was renumbered to {moved}"
                if moved is not None
                else f"field {where} was removed"
            )
            continue
        if current.name != field.name:
            problems.append(f"field {where} was renamed to {current.name}")
        if _field_shape(current) != _field_shape(field):
            problems.append(
                f"field {where} changed from {_field_shape(field)} to {_field_shape(current)}"
            )
        old_oneof = _oneof(old, field)
        new_oneof = _oneof(new, current)
        if old_oneof != new_oneof and not field.proto3_optional:
            problems.append(f"field {where} moved from oneof {old_oneof} to {new_oneof}")
    return problems


def breaking_changes(old: d.FileDescriptorSet, new: d.FileDescriptorSet) -> list[str]:
    """What a client of `old` would find broken in `new`; [] when `new` only adds."""
    problems: list[str] = []
    old_messages, old_enums, old_services = _index(old)
    new_messages, new_enums, new_services = _index(new)

    for name, message in old_messages.items():
        if name not in new_messages:
            problems.append(f"message {name} was removed")
            continue
        problems.extend(_field_changes(name, message, new_messages[name]))

    for name, enum in old_enums.items():
        if name not in new_enums:
            problems.append(f"enum {name} was removed")
            continue
        new_values = {v.number: v.name for v in new_enums[name].value}
        for value in enum.value:
            if value.number not in new_values:
                problems.append(f"enum value {name}.{value.name} (= {value.number}) was removed")
            elif new_values[value.number] != value.name:
                problems.append(
                    f"enum value {name}.{value.name} (= {value.number}) was renamed to "
                    f"{new_values[value.number]}"
                )

    for name, service in old_services.items():
        if name not in new_services:
            problems.append(f"service {name} was removed")
            continue
        new_methods = {m.name: m for m in new_services[name].method}
        for method in service.method:
            where = f"rpc {name}.{method.name}"
            new_method = new_methods.get(method.name)
            if new_method is None:
                problems.append(f"{where} was removed")
                continue
            for attribute in ("client_streaming", "server_streaming"):
                before, after = getattr(method, attribute), getattr(new_method, attribute)
                if before != after:
                    problems.append(f"{where}: {attribute} changed from {before} to {after}")
            # Only the bytes reach the wire: a renamed type must read the old one's fields
            # exactly as before (a field it adds is an addition).
            for attribute in ("input_type", "output_type"):
                before, after = getattr(method, attribute), getattr(new_method, attribute)
                if before == after:
                    continue
                old_type = old_messages.get(before.lstrip("."))
                new_type = new_messages.get(after.lstrip("."))
                if old_type is None or new_type is None:
                    problems.append(f"{where}: {attribute} changed from {before} to {after}")
                    continue
                problems.extend(
                    f"{where}: {attribute} changed from {before} to {after}, whose {problem}"
                    for problem in _field_changes(before.lstrip("."), old_type, new_type)
                )
    return problems


# ---- the contract itself --------------------------------------------------------------------


def test_the_released_contract_is_committed() -> None:
    released = load(RELEASED)
    assert [f.package for f in released.file if f.name.startswith("gradserve/")] == ["gradserve.v1"]


def test_proto_does_not_break_the_released_contract(tmp_path: Path) -> None:
    problems = breaking_changes(load(RELEASED), load(compile_contract(tmp_path)))
    assert not problems, (
        "proto/ breaks the released gradserve.v1 contract:\n  "
        + "\n  ".join(problems)
        + "\nAdd instead of changing (new field numbers, new RPCs); a breaking change needs a new "
        "package (gradserve.v2). Only at a release: scripts/snapshot_contract.sh."
    )


def _buf() -> str:
    found = shutil.which("buf") or shutil.which("buf", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(
            "buf is not installed (pip install buf-bin; scripts/install-other-language-deps.sh)"
        )
    return found


def buf_breaking(buf: str, new: Path, old: Path) -> subprocess.CompletedProcess[str]:
    # From the repository root, where buf.yaml chooses the rules (WIRE_JSON; why: buf.yaml).
    return subprocess.run(
        [buf, "breaking", str(new), "--against", str(old)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_buf_breaking_agrees(tmp_path: Path) -> None:
    run = buf_breaking(_buf(), compile_contract(tmp_path), RELEASED)
    assert run.returncode == 0, run.stdout + run.stderr


# ---- the checker catches what it must -------------------------------------------------------


def _message(descriptors: d.FileDescriptorSet, name: str) -> d.DescriptorProto:
    (file,) = [f for f in descriptors.file if f.package == "gradserve.v1"]
    return next(m for m in file.message_type if m.name == name)


def _field(descriptors: d.FileDescriptorSet, message: str, field: str) -> d.FieldDescriptorProto:
    return next(f for f in _message(descriptors, message).field if f.name == field)


def renumber_tensor_data(s: d.FileDescriptorSet) -> None:
    _field(s, "Tensor", "data").number = 5


def remove_return_gradients(s: d.FileDescriptorSet) -> None:
    fields = _message(s, "ComputeGradientsRequest").field
    fields.remove(next(f for f in fields if f.name == "return_gradients"))


def retype_loss(s: d.FileDescriptorSet) -> None:
    _field(s, "ComputeGradientsResponse", "loss").type = FIELD.TYPE_FLOAT


def make_shape_singular(s: d.FileDescriptorSet) -> None:
    _field(s, "Tensor", "shape").label = FIELD.LABEL_OPTIONAL


def remove_rpc(s: d.FileDescriptorSet) -> None:
    methods = next(f for f in s.file if f.package == "gradserve.v1").service[0].method
    methods.remove(next(m for m in methods if m.name == "Evaluate"))


def stream_apply_update(s: d.FileDescriptorSet) -> None:
    service = next(f for f in s.file if f.package == "gradserve.v1").service[0]
    next(m for m in service.method if m.name == "ApplyUpdate").server_streaming = True


def retype_evaluate_request(s: d.FileDescriptorSet) -> None:
    service = next(f for f in s.file if f.package == "gradserve.v1").service[0]
    method = next(m for m in service.method if m.name == "Evaluate")
    method.input_type = ".gradserve.v1.GetParametersRequest"


def remove_enum_value(s: d.FileDescriptorSet) -> None:
    file = next(f for f in s.file if f.package == "gradserve.v1")
    values = next(e for e in file.enum_type if e.name == "DataType").value
    values.remove(next(v for v in values if v.name == "DATA_TYPE_BFLOAT16"))


BREAKING: dict[str, tuple[Callable[[d.FileDescriptorSet], None], str]] = {
    "renumbered field": (
        renumber_tensor_data,
        "gradserve.v1.Tensor.data (= 4) was renumbered to 5",
    ),
    "removed field": (remove_return_gradients, "return_gradients (= 4) was removed"),
    "changed field type": (
        retype_loss,
        "changed from singular TYPE_DOUBLE to singular TYPE_FLOAT",
    ),
    "changed label": (make_shape_singular, "shape (= 3) changed from repeated"),
    "removed rpc": (remove_rpc, "rpc gradserve.v1.GradientService.Evaluate was removed"),
    "changed streaming": (stream_apply_update, "server_streaming changed from False to True"),
    "rpc type of another wire form": (
        retype_evaluate_request,
        "input_type changed from .gradserve.v1.EvaluateRequest to "
        ".gradserve.v1.GetParametersRequest, whose field "
        "gradserve.v1.EvaluateRequest.return_predictions (= 3) was removed",
    ),
    "removed enum value": (remove_enum_value, "DataType.DATA_TYPE_BFLOAT16 (= 4) was removed"),
}


@pytest.mark.parametrize("change", list(BREAKING))
def test_checker_catches(change: str, tmp_path: Path) -> None:
    mutate, expected = BREAKING[change]
    released = load(RELEASED)
    modified = d.FileDescriptorSet()
    modified.CopyFrom(released)
    mutate(modified)
    problems = breaking_changes(released, modified)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize("change", ["renumbered field", "removed field"])
def test_buf_catches(change: str, tmp_path: Path) -> None:
    buf = _buf()
    modified = d.FileDescriptorSet()
    modified.CopyFrom(load(RELEASED))
    BREAKING[change][0](modified)
    path = tmp_path / "modified.binpb"
    path.write_bytes(modified.SerializeToString())
    run = buf_breaking(buf, path, RELEASED)
    assert run.returncode != 0 and "deleted" in run.stdout, run.stdout + run.stderr


def test_adding_is_not_breaking() -> None:
    released = load(RELEASED)
    grown = d.FileDescriptorSet()
    grown.CopyFrom(released)
    file = next(f for f in grown.file if f.package == "gradserve.v1")
    _message(grown, "Tensor").field.add(
        name="strides", number=5, type=FIELD.TYPE_INT64, label=FIELD.LABEL_REPEATED
    )
    file.message_type.add(name="PingRequest")
    file.service[0].method.add(
        name="Ping", input_type=".gradserve.v1.PingRequest", output_type=".gradserve.v1.PingRequest"
    )
    next(e for e in file.enum_type if e.name == "DataType").value.add(name="DATA_TYPE_X", number=99)
    assert breaking_changes(released, grown) == []
