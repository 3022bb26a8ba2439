"""Policies: the one protocol, the published baselines, learned agents, ONNX export."""

from modi.agents.baselines import POLICY_NAMES, make_policy
from modi.agents.evaluation import Rollout, rollout
from modi.agents.protocol import ClairvoyantPolicy, OnlinePolicy, Policy

__all__ = [
    "POLICY_NAMES",
    "ClairvoyantPolicy",
    "OnlinePolicy",
    "Policy",
    "Rollout",
    "make_policy",
    "rollout",
]
