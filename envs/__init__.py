"""Simulated environments: model pools, networks, the batched simulator, Gymnasium envs.

Importing this package registers ``modi/ModelSelection-v0`` (the server's decision) and
``modi/Offload-v0`` (the device's decisions) with Gymnasium.
"""

from gymnasium.envs.registration import register, registry

from modi.envs.links import LinkModel, LogNormal
from modi.envs.networks import GaussianOneWay, NetworkModel, PaperNetwork
from modi.envs.pools import ModelPool, ModelSpec, PoolError
from modi.envs.simulator import ModelSelectionSim, SimulationError, StepOutcome
from modi.envs.trace_networks import MahimahiNetwork, ThroughputNetwork

ENV_IDS = ("modi/ModelSelection-v0", "modi/Offload-v0")

if "modi/ModelSelection-v0" not in registry:
    register(
        id="modi/ModelSelection-v0",
        entry_point="modi.envs.model_selection:ModelSelectionEnv",
        vector_entry_point="modi.envs.model_selection:ModelSelectionVectorEnv",
        max_episode_steps=1000,
    )

if "modi/Offload-v0" not in registry:
    register(
        id="modi/Offload-v0",
        entry_point="modi.envs.offload:OffloadEnv",
        vector_entry_point="modi.envs.offload:OffloadVectorEnv",
        max_episode_steps=1000,
    )

__all__ = [
    "ENV_IDS",
    "GaussianOneWay",
    "LinkModel",
    "LogNormal",
    "MahimahiNetwork",
    "ModelPool",
    "ModelSelectionSim",
    "ModelSpec",
    "NetworkModel",
    "PaperNetwork",
    "PoolError",
    "SimulationError",
    "StepOutcome",
    "ThroughputNetwork",
]
