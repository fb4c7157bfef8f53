"""save_state / load_state(_with_optimizer) and the checkpoint listing through the SDK."""

from __future__ import annotations

from pathlib import Path

import pytest
import tinker
from tinker import types
from tinker_helpers import (
    datum,
    digest,
    sdk_garbage,  # noqa: F401 - an autouse fixture
    sequences,
    service,
    start,
    weights_for,
)

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    # load_state* is deprecated in the SDK (for create_training_client_from_state*): both served.
    pytest.mark.filterwarnings("ignore:DEPRECATED:FutureWarning"),
    pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning"),
]


def test_load_state_with_optimizer_then_one_step_is_the_uninterrupted_step_bitwise(
    make_server, make_stub, tmp_path: Path
) -> None:
    running, url = start(make_server, tmp_path, checkpoint_dir=str(tmp_path / "checkpoints"))
    stub = make_stub(running)
    client = service(url).create_lora_training_client(base_model="tiny", rank=8, seed=3).result()
    run = client.model_id.replace(":", "-")
    tokens = sequences(4, 2)
    data = [datum(t, weights=weights_for(t, i)) for i, t in enumerate(tokens)]

    def step() -> None:
        client.forward_backward(data, "cross_entropy")
        client.optim_step(types.AdamParams(learning_rate=0.03)).result()

    step()
    step()
    saved = client.save_state("mid").result()
    assert saved.path == f"tinker://{client.model_id}/weights/mid"
    at_save = digest(stub, run)
    step()
    uninterrupted = digest(stub, run)

    client.load_state_with_optimizer(saved.path).result()
    assert digest(stub, run)[0] == at_save[0]
    step()
    assert digest(stub, run)[0] == uninterrupted[0]

    # Weights only: a fresh optimizer, so the same step lands elsewhere (the optimizer state
    # the load above restored is what made it equal).
    client.load_state(saved.path).result()
    step()
    assert digest(stub, run)[0] != uninterrupted[0]

    # The SDK's way now: a new model from the checkpoint, with its optimizer state.
    api = service(url)
    resumed = api.create_training_client_from_state_with_optimizer(saved.path).result()
    resumed.forward_backward(data, "cross_entropy")
    resumed.optim_step(types.AdamParams(learning_rate=0.03)).result()
    assert digest(stub, resumed.model_id.replace(":", "-"))[0] == uninterrupted[0]

    listed = (
        tinker.RestClient(base_url=url, api_key="tml-test")
        .list_checkpoints(client.model_id)
        .result()
    )
    mid = [c for c in listed.checkpoints if c.checkpoint_id == "weights/mid"]
    assert (
        len(mid) == 1 and mid[0].tinker_path == saved.path and mid[0].checkpoint_type == "training"
    )


def test_a_checkpoint_of_another_model_or_none_is_refused_naming_the_path(
    make_server, tmp_path: Path
) -> None:
    _, url = start(make_server, tmp_path, checkpoint_dir=str(tmp_path / "checkpoints"))
    api = service(url)
    first = api.create_lora_training_client(base_model="tiny", rank=4, seed=1).result()
    second = api.create_lora_training_client(base_model="tiny", rank=4, seed=1).result()
    saved = first.save_state("a").result()
    with pytest.raises(Exception, match="another model"):
        second.load_state(saved.path).result(timeout=30)
    with pytest.raises(Exception, match="path"):
        api.create_lora_training_client(base_model="tiny", rank=4, seed=1).result().load_state(
            f"tinker://{first.model_id}/nothing/a"
        ).result(timeout=30)
