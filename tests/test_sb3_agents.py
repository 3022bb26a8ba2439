"""SB3 agents (PPO, DQN, A2C): the VecEnv adapter, the pool-agnostic policies, export, learning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import VecCheckNan, VecEnv

from modi.agents.baselines import make_policy
from modi.agents.evaluation import rollout
from modi.agents.sb3_agents import (
    SB3_AGENTS,
    A2CAgent,
    DQNAgent,
    PPOAgent,
    SimVecEnv,
    load_sb3,
)
from modi.agents.scorers import split_obs
from modi.agents.training import TrainingHistory
from modi.envs.model_selection import build_sim
from modi.runtime import features as F

#: Tiny budgets: these tests check plumbing, not learning (except ``test_ppo_learns...``).
TINY: dict[str, dict[str, Any]] = {
    "ppo": {"n_steps": 16, "batch_size": 128, "n_epochs": 2},
    "dqn": {"learning_starts": 256, "batch_size": 128},
    "a2c": {"n_steps": 8},
}
TINY_REQUESTS = 2048


class Asym:
    """Download much shorter than upload: ModiPick's budget SLA - 2·T_input is too cautious."""

    name = "asym"

    def reset(self, rng: np.random.Generator, n: int, c: int) -> None:
        """Stateless."""

    def sample(self, rng: np.random.Generator, ctx: Any) -> tuple[np.ndarray, np.ndarray]:
        """Upload/download times (ms) from an RTT and a bandwidth (Mbit/s)."""
        rtt = rng.lognormal(np.log(15), 0.5, ctx.client.shape)
        bw = rng.lognormal(np.log(60), 0.5, ctx.client.shape)
        self.upload_rtt_ms = rtt  # what the server's TCP stack measures (envs.rtt)
        return (
            rtt / 2 + ctx.payload_bytes * 8 / 1e3 / bw,
            rtt / 2 + ctx.response_bytes * 8 / 1e3 / bw,
        )


def observations(pool: str = "modipick_table2", n: int = 10_000, seed: int = 3) -> np.ndarray:
    """``n`` observations of a pool (1000 streams, random choices, SLAs 50-400 ms)."""
    sim = build_sim(pool, num_envs=1000, sla_range_ms=(50.0, 400.0))
    rng = np.random.default_rng(seed)
    out = [sim.reset(seed).copy()]
    while sum(len(o) for o in out) < n:
        sim.step(rng.integers(0, sim.num_models, size=sim.num_envs))
        out.append(sim.obs.copy())
    return np.concatenate(out)[:n]


@pytest.fixture(scope="module")
def obs11() -> np.ndarray:
    return observations()


@pytest.fixture(scope="module")
def trained() -> dict[str, Any]:
    """One tiny-budget agent of each kind, trained on the 11-model pool."""
    out = {}
    for kind, cls in SB3_AGENTS.items():
        agent = cls(seed=0, **TINY[kind])
        sim = build_sim("modipick_table2", num_envs=16, sla_range_ms=(50.0, 400.0))
        agent.fit(sim, TINY_REQUESTS, seed=0, progress=False)
        out[kind] = agent
    return out


# ------------------------------------------------------------------------------ the adapter
def test_adapter_obeys_the_vecenv_contract() -> None:
    sim = build_sim("modipick_table2", num_envs=4)
    venv = SimVecEnv(sim, episode_requests=3)
    assert isinstance(venv, VecEnv)
    assert venv.num_envs == 4
    assert venv.observation_space.shape == (F.obs_dim(11),)
    assert venv.action_space.n == 11
    venv.seed(5)
    obs = venv.reset()
    assert obs.shape == (4, F.obs_dim(11)) and obs.dtype == np.float32
    assert all(venv.observation_space.contains(o) for o in obs)
    assert venv.get_attr("render_mode") == [None] * 4
    assert venv.env_is_wrapped(object) == [False] * 4
    for t in range(1, 7):
        obs, rew, dones, infos = venv.step(np.array([0, 3, 5, 10]))
        assert obs.shape == (4, F.obs_dim(11)) and obs.dtype == np.float32
        assert rew.shape == (4,) and rew.dtype == np.float32
        assert dones.shape == (4,) and dones.dtype == np.bool_
        assert isinstance(infos, list) and len(infos) == 4
        assert all(isinstance(i, dict) for i in infos)
        if t % 3 == 0:
            assert dones.all(), f"step {t}: expected a truncation every 3 requests"
            for i, info in enumerate(infos):
                assert info["TimeLimit.truncated"] is True
                term = info["terminal_observation"]
                assert term.shape == (F.obs_dim(11),) and term.dtype == np.float32
                np.testing.assert_array_equal(term, obs[i])  # the stream goes on
                assert info["episode"]["l"] == 3
        else:
            assert not dones.any() and all(not i for i in infos)
    with pytest.raises(NotImplementedError, match="sim"):
        venv.env_method("reset")


def test_adapter_replays_the_simulator_stream_for_a_seed() -> None:
    def run(seed: int) -> list[np.ndarray]:
        venv = VecCheckNan(
            SimVecEnv(build_sim("modipick_table2", num_envs=8)), raise_exception=True
        )
        venv.seed(seed)
        out = [venv.reset()]
        for a in range(5):
            out.append(venv.step(np.full(8, a))[0])
        return out

    a, b = run(11), run(11)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a[0], build_sim("modipick_table2", num_envs=8).reset(11))
    assert not np.array_equal(a[1], run(12)[1])


def test_adapter_reports_served_request_statistics() -> None:
    sim = build_sim("modipick_table2", num_envs=4, sla_ms=1000.0)
    venv = SimVecEnv(sim)
    venv.reset()
    venv.step(np.zeros(4, dtype=np.int64))  # SqueezeNet (49 %) always meets 1 s
    assert venv.stats_count == 4
    row = venv.pop_stats()
    assert row["attainment"] == pytest.approx(1.0)
    assert row["effective_accuracy"] == pytest.approx(0.49, abs=1e-6)
    assert venv.stats_count == 0


# ------------------------------------------------------------------------ the trained agents
@pytest.mark.parametrize("kind", sorted(SB3_AGENTS))
def test_scorer_decides_as_sb3_predict_deterministic(
    trained: dict[str, Any], obs11: np.ndarray, kind: str
) -> None:
    agent = trained[kind]
    mine = agent.select(obs11)
    sb3, _ = agent.model.predict(obs11, deterministic=True)
    agree = float((mine == sb3).mean())
    assert agree == 1.0, f"{kind}: select agrees with model.predict on {agree:.4%} of 10,000 obs"
    assert len(np.unique(mine)) > 1 or kind == "dqn", "expected varied choices"


@pytest.mark.parametrize("kind", sorted(SB3_AGENTS))
def test_same_weights_score_a_pool_of_another_size(trained: dict[str, Any], kind: str) -> None:
    agent = trained[kind]
    obs24 = observations("mdinference_p2", n=2000)
    k = F.ObsLayout.from_obs_dim(obs24.shape[1]).num_models
    assert k > 20, f"mdinference_p2 should be a large pool, got {k} models"
    actions = agent.select(obs24)
    assert actions.shape == (2000,) and actions.min() >= 0 and actions.max() < k
    scores = agent.scores(obs24)
    assert scores.shape == (2000, k)
    # Shared weights: a model's score does not depend on which other models are in the pool.
    sub = obs24[:, : F.R + 5 * F.P]
    np.testing.assert_allclose(agent.scores(sub), scores[:, :5], rtol=1e-5, atol=1e-5)
    # ... nor on its position.
    req, models = split_obs(torch.from_numpy(obs24))
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(0))
    flipped = torch.cat([req, models[:, perm].reshape(2000, -1)], dim=1).numpy()
    np.testing.assert_allclose(agent.scores(flipped), scores[:, perm.numpy()], atol=1e-5)


def test_training_continues_on_another_pool(trained: dict[str, Any]) -> None:
    agent = PPOAgent(seed=1, **TINY["ppo"])
    agent.fit(build_sim("modipick_table2", num_envs=16), 512, seed=1, progress=False)
    before = agent.scores(observations("mdinference_p2", n=100))
    hist = agent.fit(build_sim("mdinference_p2", num_envs=8), 512, seed=2, progress=False)
    assert hist.requests and agent.model.action_space.n > 20
    after = agent.scores(observations("mdinference_p2", n=100))
    assert not np.allclose(before, after), "the second fit should have changed the weights"


@pytest.mark.parametrize("kind", sorted(SB3_AGENTS))
def test_save_and_load_give_identical_decisions(
    trained: dict[str, Any], obs11: np.ndarray, kind: str, tmp_path: Path
) -> None:
    agent = trained[kind]
    path = agent.save(tmp_path / f"{kind}.pt")
    assert path.is_file() and len(list(tmp_path.iterdir())) == 1
    for src in (path, torch.load(path, weights_only=False)):
        back = load_sb3(src)
        assert type(back) is type(agent) and back.kind == kind and back.name == agent.name
        assert back.hparams == agent.hparams
        np.testing.assert_array_equal(back.select(obs11), agent.select(obs11))
        np.testing.assert_array_equal(back.scores(obs11), agent.scores(obs11))
        assert back.feature_ranges == agent.feature_ranges
    # a loaded agent trains on, widening its recorded ranges
    before = back.feature_ranges
    back.fit(build_sim("modipick_table2", num_envs=16), 256, seed=5, progress=False)
    after = back.feature_ranges
    assert before is not None and after is not None
    assert after.observations > before.observations
    assert all(a <= b for a, b in zip(after.lo, before.lo, strict=True))


@pytest.mark.parametrize("kind", sorted(SB3_AGENTS))
def test_training_records_the_feature_ranges_it_saw(trained: dict[str, Any], kind: str) -> None:
    """Every observation handed to SB3 (and the warm-up batch) widens the agent's ranges, which
    export writes for the runtime shield."""
    r = trained[kind].feature_ranges
    assert r is not None and r.observations >= TINY_REQUESTS
    sla_lo, sla_hi = r.get("sla_ms")
    assert 50.0 <= sla_lo < 100.0 and 350.0 < sla_hi <= 400.0
    assert r.get("queue_len") == (0.0, 0.0)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
@pytest.mark.parametrize("kind", ["dqn", "ppo"])  # A2C's scorer is the same module as PPO's
def test_onnx_export_matches_select(
    trained: dict[str, Any], obs11: np.ndarray, kind: str, tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    agent = trained[kind]
    req, models = split_obs(torch.from_numpy(obs11))
    batch, nmod = torch.export.Dim("batch"), torch.export.Dim("models")
    f = tmp_path / "selector.onnx"
    torch.onnx.export(
        agent.selector_module(),
        (req, models),
        f,
        dynamo=True,
        opset_version=18,
        external_data=False,
        dynamic_shapes={"request": {0: batch}, "models": {0: batch, 1: nmod}},
        input_names=["request", "models"],
        output_names=["action", "scores"],
    )
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    for obs in (obs11, observations("mdinference_p2", n=1000)):
        r, m = split_obs(torch.from_numpy(obs))
        action, scores = sess.run(None, {"request": r.numpy(), "models": m.numpy()})
        agree = float((action == agent.select(obs)).mean())
        assert agree == 1.0, f"{kind}: ONNX agrees with select on {agree:.4%} of {len(obs)} obs"
        np.testing.assert_allclose(scores, agent.scores(obs), rtol=1e-4, atol=1e-5)


def test_fit_reports_a_training_curve_and_calls_back(tmp_path: Path) -> None:
    rows: list[tuple[int, dict[str, float]]] = []
    agent = A2CAgent(seed=0, log_every=500, **TINY["a2c"])

    def on_chunk(seen: int, row: dict[str, float]) -> None:
        rows.append((seen, row))
        agent.save(tmp_path / "checkpoint.pt")  # what modi-train does mid-fit

    hist = agent.fit(
        build_sim("modipick_table2", num_envs=16), 2000, seed=0, progress=False, callback=on_chunk
    )
    assert load_sb3(tmp_path / "checkpoint.pt").kind == "a2c"
    assert isinstance(hist, TrainingHistory)
    assert [r for r, _ in rows] == hist.requests and len(rows) >= 3
    assert hist.requests == sorted(hist.requests) and hist.requests[-1] >= 2000
    for _, row in rows:
        assert set(row) == {"reward", "attainment", "effective_accuracy"}
        assert 0.0 <= row["effective_accuracy"] <= row["attainment"] <= 1.0


def test_fit_is_reproducible_for_a_seed(obs11: np.ndarray) -> None:
    def train(seed: int) -> np.ndarray:
        agent = DQNAgent(seed=seed, **TINY["dqn"])
        agent.fit(build_sim("modipick_table2", num_envs=16), 1024, seed=seed, progress=False)
        return agent.scores(obs11[:500])

    np.testing.assert_array_equal(train(4), train(4))


def test_an_unfitted_agent_says_to_fit_first(obs11: np.ndarray) -> None:
    with pytest.raises(RuntimeError, match="fit"):
        PPOAgent().select(obs11[:3])


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (PPOAgent, {"learning_rate": 0.0}, "ppo.learning_rate"),
        (PPOAgent, {"n_steps": 0}, "ppo.n_steps"),
        (PPOAgent, {"batch_size": 1}, "ppo.batch_size"),
        (PPOAgent, {"gamma": 1.5}, "ppo.gamma"),
        (PPOAgent, {"clip_range": 0.0}, "ppo.clip_range"),
        (PPOAgent, {"ent_coef": -0.1}, "ppo.ent_coef"),
        (PPOAgent, {"net_arch": []}, "ppo.net_arch"),
        (PPOAgent, {"net_arch": [64, 0]}, "ppo.net_arch"),
        (PPOAgent, {"activation": "sigmoid"}, "ppo.activation"),
        (PPOAgent, {"lr_schedule": "cosine"}, "ppo.lr_schedule"),
        (PPOAgent, {"episode_requests": 0}, "ppo.episode_requests"),
        (PPOAgent, {"torch_threads": 0}, "ppo.torch_threads"),
        (PPOAgent, {"miss_penalty": -1.0}, "miss_penalty"),
        (A2CAgent, {"n_steps": 2.5}, "a2c.n_steps"),
        (A2CAgent, {"gae_lambda": 2.0}, "a2c.gae_lambda"),
        (A2CAgent, {"use_rms_prop": "yes"}, "a2c.use_rms_prop"),
        (DQNAgent, {"buffer_size": 0}, "dqn.buffer_size"),
        (DQNAgent, {"exploration_final_eps": 1.5}, "dqn.exploration_final_eps"),
        (DQNAgent, {"exploration_initial_eps": 0.01}, "dqn.exploration_final_eps"),
        (DQNAgent, {"train_freq": 0}, "dqn.train_freq"),
        (DQNAgent, {"max_grad_norm": 0.0}, "dqn.max_grad_norm"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_field(
    cls: type, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        cls(**kwargs)


def test_load_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_sb3(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_text("not a policy")
    with pytest.raises(ValueError, match="not a saved modi policy"):
        load_sb3(bad)
    with pytest.raises(ValueError, match="unknown policy kind 'linucb'"):
        load_sb3({"kind": "linucb"})


def test_ppo_learns_to_beat_modipick_on_an_asymmetric_link() -> None:
    """Download << upload: ModiPick's budget SLA - 2·T_input wastes half the upload time."""
    agent = PPOAgent(seed=0)
    agent.fit(build_sim(network=Asym(), num_envs=64, sla_range_ms=(50, 400)), 30_000, 0, False)
    for sla in (100.0, 115.0):
        ev = {
            p.name: rollout(
                p, build_sim(network=Asym(), num_envs=10, sla_ms=sla), 300, seed=7
            ).summary()["effective_accuracy"]
            for p in (agent, make_policy("modipick"))
        }
        assert ev["ppo"] > ev["modipick"] + 0.05, f"SLA {sla}: {ev}"
