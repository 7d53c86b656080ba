"""MBPO seeds in blocks (experiments.mbpo_seeds): the block plan, blocks reassembled in seed
order whatever order they finish in, and (slow) a real local Ray instance giving the local run's
returns bit for bit."""

import dataclasses

import jax
import numpy as np
import pytest

from mismatch_jax.agents import mbpo_config, sac_config
from mismatch_jax.experiments import mbpo_seeds
from mismatch_jax.models import core as models

TINY = mbpo_config.MBPOConfig(
    sac=sac_config.SACConfig(total_env_steps=200, eval_interval=100, learning_starts=50, num_eval_episodes=1,
                             buffer_capacity=200, batch_size=16, hidden_size=16, updates_per_step=1, num_seeds=3),
    model=models.ModelConfig(kind="PE", ensemble_size=2, hidden_size=16, num_hidden_layers=2, angle_features=True),
    model_training=mbpo_config.ModelTraining(batch_size=32, num_epochs=1),
    model_train_freq=50, epoch_length=100, rollout_batch_size=8, rollout_schedule=(1, 3, 1, 3),
    model_share_ramp_epochs=2.0,
)


@pytest.mark.unit
def test_seed_blocks_cover_every_seed_once_in_order():
    assert mbpo_seeds.seed_blocks(8, 0) == [(0, 8)]
    assert mbpo_seeds.seed_blocks(8, 3) == [(0, 3), (3, 3), (6, 2)]
    assert mbpo_seeds.seed_blocks(5, 5) == [(0, 5)]
    assert mbpo_seeds.seed_blocks(2, 7) == [(0, 2)]


class ReversedCluster:
    """Runs ``map``'s calls in this process, last first: what Ray's any-order completion can do."""

    devices_per_task = len(jax.local_devices())

    def __init__(self):
        self.calls = []

    def map(self, function, calls, names, status, what="task"):
        self.calls = list(calls)
        for index in reversed(range(len(calls))):
            yield index, function(*calls[index])


@pytest.mark.slow
def test_blocks_finishing_in_any_order_reassemble_to_the_local_run():
    local = mbpo_seeds.run_seeds(TINY, seeds_per_program=2)
    cluster = ReversedCluster()
    remote = mbpo_seeds.run_seeds(TINY, seeds_per_program=2, cluster=cluster)
    assert [(c[1], c[2]) for c in cluster.calls] == [(0, 2), (2, 1)]
    assert local["blocks"] == remote["blocks"] == 2
    assert local["metrics"].eval_return.shape == (3, 2)
    for a, b in zip(jax.tree.leaves(local["metrics"]), jax.tree.leaves(remote["metrics"])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.unit
def test_a_worker_with_another_device_count_is_refused():
    from mismatch_jax.errors import InputError

    with pytest.raises(InputError, match="match --devices"):
        mbpo_seeds.run_seed_block(TINY, 0, 1, num_devices=len(jax.local_devices()) + 1)


@pytest.mark.slow
def test_seed_blocks_on_a_local_ray_instance_equal_the_local_run():
    pytest.importorskip("ray")
    from mismatch_jax.sweep.ray_runner import RayOptions, connect

    config = dataclasses.replace(TINY, sac=dataclasses.replace(TINY.sac, num_seeds=2))
    local = mbpo_seeds.run_seeds(config, seeds_per_program=1)
    cluster = connect(RayOptions(address=None, num_cpus=1.0), log=lambda s: None)
    try:
        remote = mbpo_seeds.run_seeds(config, seeds_per_program=1, cluster=cluster)
    finally:
        cluster.close()
    for a, b in zip(jax.tree.leaves(local["metrics"]), jax.tree.leaves(remote["metrics"])):
        np.testing.assert_array_equal(a, b)
