"""--run NAME: find the trainer's run on the server, or create it, and say how to train it.

A run this trainer creates is trained as the default run of a fresh server is: the seed
tutorial's initial w, b for the linear model on synthetic data (--init auto), each step
checked against its version, and an exact resume after a server restart. A fork
(--from-checkpoint) is created by this trainer too and resumes exactly, but starts from the
checkpoint's parameters (auto init keeps them). A run that exists already is used as
--shared uses the default run: its parameters are the server's, and steps apply at whatever
version it is at, since this trainer cannot know who else drives it (a restarted trainer,
another one with the same --run).
"""

from __future__ import annotations

import dataclasses
import logging

from gradserve.errors import AlreadyExistsError, NotFoundError

from .config import TrainConfig
from .gradient_client import GradientClient

logger = logging.getLogger(__name__)


def prepare_run(client: GradientClient, config: TrainConfig) -> TrainConfig:
    """Make sure config.run.name exists on the server (the client is bound to it); returns
    the configuration to train with."""
    run = config.run
    if not run.name:
        return config
    try:
        client.model_info()
    except NotFoundError:
        try:
            create(client, config)
        except AlreadyExistsError:
            pass  # another trainer created it in between: it exists
        else:
            if run.from_checkpoint is not None and config.data.init == "auto":
                return dataclasses.replace(
                    config, data=dataclasses.replace(config.data, init="server")
                )
            return config
    if run.from_checkpoint is not None:
        logger.warning(
            "run %s exists already: --from-checkpoint %s not applied", run.name, run.from_checkpoint
        )
    logger.info("run %s exists: training it as --shared does (its parameters)", run.name)
    return dataclasses.replace(config, parallel=dataclasses.replace(config.parallel, shared=True))


def create(client: GradientClient, config: TrainConfig) -> None:
    run = config.run
    if run.from_checkpoint is not None:
        # A fork is the checkpoint's model, loss and optimizer, and its optimizer state, so
        # that it continues exactly as its parent would have.
        name, info = client.create_run(
            run.name, from_checkpoint=run.from_checkpoint, with_optimizer_state=True
        )
    else:
        name, info = client.create_run(
            run.name,
            model=config.embedded.model,
            loss=config.embedded.loss,
            optimizer=config.embedded.optimizer,
            seed=config.data.seed,
        )
    logger.info("created run %s: %s, %s", name, info.model_spec, info.optimizer)
