"""A trainer that re-syncs with its server says so, in one line on its people's stream."""

from __future__ import annotations

import io

from gradserve.client.config import OutputConfig, ScheduleConfig, TrainConfig, TransportConfig
from gradserve.client.data import seed_data
from gradserve.client.gradient_client import GradientClient
from gradserve.client.loop import train
from gradserve.client.metrics import TrainMetrics
from gradserve.client.recorder import Recorder
from gradserve.client.session import make_plan, make_transport
from gradserve.client.transport import StepDone

CONFIG = TrainConfig(
    schedule=ScheduleConfig(epochs=2, batch_size=10, learning_rate=0.01),
    transport=TransportConfig(kind="unary"),
)


class MovedUnderneath(Recorder):
    """After step 4, another client sets the parameters: the run's next update meets a newer
    version than it expects, as after a restart from an older checkpoint."""

    def __init__(self, other: GradientClient, stream: io.StringIO) -> None:
        super().__init__(
            TrainMetrics("test", "linear"),
            output=OutputConfig(progress="never"),
            epochs=2,
            human=stream,
            progress=stream,
        )
        self.other = other
        self.moved = False

    def step_done(self, done: StepDone) -> None:
        super().step_done(done)
        if done.step.number == 4 and not self.moved:
            self.moved = True
            self.other.set_parameters(self.other.get_parameters()[1])


def test_a_resync_is_one_line(server) -> None:
    seed = seed_data(0, 100)
    stream = io.StringIO()
    with GradientClient(server.address) as client, GradientClient(server.address) as other:
        recorder = MovedUnderneath(other, stream)
        train(
            client,
            make_plan(CONFIG, seed.dataset),
            make_transport(client, CONFIG),
            recorder,
            initial={"w": seed.initial_w, "b": seed.initial_b},
        )
    notices = [line for line in stream.getvalue().splitlines() if "re-synced" in line]
    # Version 1 is the initial parameters, steps 0..4 made 2..6, the other client 7.
    assert len(notices) == 1, stream.getvalue()
    assert notices[0].startswith(
        "gradserve-train: re-synced with the server at version 7: continuing at step 6 ("
    )
