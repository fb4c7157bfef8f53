"""Checkpoints whose checksums match but whose content is wrong are skipped, one warning line
each, and the one before them restored; the manifest itself is covered by its digest."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from helpers import linear_batch

from gradserve.client.gradient_client import GradientClient
from gradserve.server.checkpoints.encoding import manifest_digest
from gradserve.server.checkpoints.files import MANIFEST, TENSORS, list_checkpoints

Edit = Callable[[dict[str, Any], dict[str, torch.Tensor]], None]


def steps(client: GradientClient, count: int, *, then_accumulate: bool = False) -> None:
    generator = torch.Generator().manual_seed(count)
    for _ in range(count):
        client.compute_gradients(*linear_batch(4, generator))
        client.apply_update(0.05)
    if then_accumulate:
        client.compute_gradients(*linear_batch(4, generator), request_id="kept")


def good_then_newest(make_server, directory: Path) -> tuple[str, str]:
    """Two checkpoints (v2, then v4 with Adam state, .grad and a request id); only those."""
    server = make_server(checkpoint_dir=str(directory), checkpoint_keep=5, optimizer="adam")
    with GradientClient(server.address) as client:
        steps(client, 2)
        good = server.checkpointer.save().path.name
        steps(client, 2, then_accumulate=True)
        newest = server.checkpointer.save().path.name
    server.stop(0)
    for _, path in list_checkpoints(directory):
        if path.name not in (good, newest):
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
    return good, newest


def rewrite(folder: Path, edit: Edit, *, sign: bool = True) -> None:
    """Apply `edit` to the manifest and tensors, then (sign) make every checksum match."""
    manifest = json.loads((folder / MANIFEST).read_text())
    tensors = safetensors.torch.load((folder / TENSORS).read_bytes())
    edit(manifest, tensors)
    data = safetensors.torch.save(tensors)
    if sign:
        manifest["tensors_sha256"] = hashlib.sha256(data).hexdigest()
        manifest["tensors_bytes"] = len(data)
        if manifest.get("format_version") == 2:
            manifest["manifest_sha256"] = manifest_digest(manifest)
    (folder / TENSORS).write_bytes(data)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def restarted_version(make_server, directory: Path, caplog, newest: str) -> int:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gradserve.server.checkpoints.files"):
        server = make_server(checkpoint_dir=str(directory), optimizer="adam")
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 1 and newest in skipped[0], skipped
    with GradientClient(server.address) as client:
        # The restored server still trains: nothing of the bad checkpoint reached it.
        steps(client, 1)
        return client.model_info().model_version - 1


def wrong_gradient_shape(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    tensors["gradients.w"] = torch.zeros(3, 2)


def no_model_spec(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    del manifest["model_spec"]


def wrong_adam_moment_shape(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    name = next(n for n in tensors if n.startswith("optimizer.") and n.endswith("exp_avg"))
    tensors[name] = torch.zeros(7)


def negative_accumulated_batches(
    manifest: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    manifest["accumulated_batches"] = -1


def negative_adam_step(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    name = next(n for n in tensors if n.startswith("optimizer.") and n.endswith("step"))
    tensors[name] = torch.tensor(-5.0)


def oversized_request_id(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    manifest["request_ids"][0][1] = "x" * 500


def wrong_parameter_dtype(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    tensors["parameters.b"] = tensors["parameters.b"].double()


@pytest.mark.parametrize(
    "edit",
    [
        wrong_gradient_shape,
        no_model_spec,
        wrong_adam_moment_shape,
        negative_accumulated_batches,
        negative_adam_step,
        oversized_request_id,
        wrong_parameter_dtype,
    ],
)
def test_a_signed_but_wrong_checkpoint_is_skipped(make_server, tmp_path, caplog, edit) -> None:
    _, newest = good_then_newest(make_server, tmp_path)
    rewrite(tmp_path / newest, edit)
    assert restarted_version(make_server, tmp_path, caplog, newest) == 2


def test_an_edited_model_version_is_caught_by_the_manifest_digest(
    make_server, tmp_path, caplog
) -> None:
    _, newest = good_then_newest(make_server, tmp_path)

    def later_version(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        manifest["model_version"] = 9

    rewrite(tmp_path / newest, later_version, sign=False)
    assert restarted_version(make_server, tmp_path, caplog, newest) == 2


def test_an_edited_and_resigned_model_version_disagrees_with_the_folder(
    make_server, tmp_path, caplog
) -> None:
    _, newest = good_then_newest(make_server, tmp_path)

    def later_version(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        manifest["model_version"] = 9

    rewrite(tmp_path / newest, later_version)
    assert restarted_version(make_server, tmp_path, caplog, newest) == 2


def as_format_1(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    manifest["format_version"] = 1
    del manifest["manifest_sha256"]


def test_format_1_checkpoints_still_restore(make_server, tmp_path) -> None:
    _, newest = good_then_newest(make_server, tmp_path)
    rewrite(tmp_path / newest, as_format_1)
    server = make_server(checkpoint_dir=str(tmp_path), optimizer="adam")
    assert server.store.version == 4 and server.store.accumulated_batches == 1


def test_format_1_checkpoints_are_validated_too(make_server, tmp_path, caplog) -> None:
    _, newest = good_then_newest(make_server, tmp_path)

    def damaged(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        as_format_1(manifest, tensors)
        wrong_gradient_shape(manifest, tensors)

    rewrite(tmp_path / newest, damaged)
    assert restarted_version(make_server, tmp_path, caplog, newest) == 2
