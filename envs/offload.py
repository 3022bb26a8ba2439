"""``modi/Offload-v0``: the device's decisions at capture time, batched in numpy.

For every captured image the phone decides (DESIGN.md §1, first row of the table):

1. where to preprocess it — on the device (then upload the small 224x224 payload) or on the
   server (upload the raw image; PieSlicer);
2. where to run the model — one of its on-device models, or offload to the server, whose model
   choice is made there by a pluggable server policy (ModiPick by default) from exactly the
   observation the serving runtime would build (:mod:`modi.runtime.features`);
3. whether to run an on-device backup model in parallel with an offloaded request
   (MDInference): its answer counts when the remote one misses the SLA and it finished in time.

Timeline of an offloaded request captured at ``t = 0`` (all in ms)::

    preprocess on device:  t_dp ──► upload S_pre (t_in) ──► server prep (small) ──► exec ──► t_out
    preprocess on server:  upload S_raw (t_in) ──► server prep (R MP) ──► exec ──► t_out
    backup (if on):        t_dp ──► load (if not in memory) ──► backup inference

``pre-execution = everything before exec``; ``remote e2e = pre-execution + queue (0) + exec +
t_out``. A local request takes ``t_dp + load (if not in memory) + inference``.

Common random numbers: everything that does not depend on the actions is drawn ahead in blocks
from the ``reset`` seed — capture times, SLAs, images, device/server preprocessing noise,
on-device and server execution noise, and the network for *both* payloads (the raw image and
the preprocessed one, sampled from the same network state, see :func:`sample_twins`).
So every policy meets exactly the same requests, and the counterfactual outcome of every action
is known to the oracle and the tests (never to an observation).

What changes with the actions, per stream: which on-device models are in memory (loads cost
time and energy), what the server has learned (its μ/σ profiles, EWMA as ModiPick keeps them,
and its history of this device's upload times).
"""

from __future__ import annotations

import copy
import logging
import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from modi.envs.catalog import load_preset
from modi.envs.devices import DeviceError, DeviceProfile, Preprocessing, RadioEnergy, radio_profile
from modi.envs.images import INPUT_MEGAPIXELS, ImageModel
from modi.envs.networks import BlockContext, GaussianOneWay, NetworkModel
from modi.envs.pools import ModelPool
from modi.envs.rtt import fold_sample, upload_samples
from modi.envs.trace_networks import MahimahiNetwork, ThroughputNetwork
from modi.envs.vector import StreamVectorEnv
from modi.runtime import device_features as dfeat
from modi.runtime.features import (
    ACC,
    BUDGET,
    MU,
    SIGMA,
    ObsLayout,
    client_history_update,
    encode,
    upload_history_update,
)
from modi.runtime.features import MODEL_FEATURES as SERVER_MODEL_FEATURES
from modi.runtime.features import REQUEST_FEATURES as SERVER_REQUEST_FEATURES
from modi.runtime.modipick import modipick_select
from modi.runtime.profiles import ProfileTracker

log = logging.getLogger(__name__)

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

#: Index of each component of the action.
ACTION_PREP, ACTION_PLACEMENT, ACTION_BACKUP = 0, 1, 2
#: Preprocessing locations (action component 0).
PREP_DEVICE, PREP_SERVER = 0, 1
#: Who delivered the answer (``info["answered_by"]``).
ANSWER_NONE, ANSWER_REMOTE, ANSWER_BACKUP, ANSWER_LOCAL = 0, 1, 2, 3
ANSWER_NAMES = ("none", "remote", "backup", "local")

MIN_EXEC_MS = 1e-3
#: Cap on the device's uplink bandwidth measurement (Mbit/s): a network whose upload time does
#: not depend on the payload (the papers' Gaussian one) measures as "infinitely" fast.
MAX_UPLINK_MBPS = 1e5
#: Payloads (bytes) of the device's bandwidth measurement: the uplink bandwidth it measures at a
#: request is what a 1 MB upload gains over a 20 KB one, under that request's link conditions.
PROBE_BYTES = (20e3, 1e6)
#: Server-side preprocessing (decode + resize on a server CPU): an assumption, documented in
#: ``Preprocessing``; PieSlicer only reports that in-cloud is faster than on-device at every size.
DEFAULT_SERVER_PREP = {"intercept_ms": 2.0, "ms_per_mp": 8.0, "cv": 0.1}
DEFAULT_EPISODE_REQUESTS = 1000
_BLOCK_FLOATS = 1 << 20
#: Initial number of in-flight measurement slots per device (grows when needed).
_PENDING_SLOTS = 4

#: Network models whose ``sample`` keeps no state and draws nothing (safe to call twice).
_STATELESS_NETWORKS: tuple[type, ...] = (MahimahiNetwork, ThroughputNetwork, GaussianOneWay)


class OffloadError(ValueError):
    """An Offload-v0 argument or action is out of range; the message names it."""


@runtime_checkable
class ServerPolicy(Protocol):
    """What runs the server side: batched ``select`` over :mod:`modi.runtime.features`
    observations (any baseline of :mod:`modi.agents.baselines`, a bandit, an SB3 agent or an
    exported selector wrapped as a policy)."""

    name: str

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Reseed the policy's own randomness."""

    def select(self, obs: NDArray[np.float32]) -> NDArray[np.intp]:
        """One model index per observation row."""
        ...


class ServerModiPick:
    """ModiPick (§3.3) as the default server policy, straight from :mod:`modi.runtime.modipick`
    (``modi.agents.baselines.ModiPick`` wraps the same rule; envs do not import agents)."""

    name = "modipick"

    def __init__(self, threshold_ms: float = 10.0) -> None:
        if threshold_ms < 0:
            raise OffloadError(f"server_policy threshold_ms must be >= 0, got {threshold_ms}")
        self.threshold_ms = float(threshold_ms)
        self._rng = np.random.default_rng()

    def reset(self, num_envs: int, seed: int | None = None) -> None:
        """Reseed stage three's random choice."""
        self._rng = np.random.default_rng(seed)

    def select(self, obs: NDArray[np.float32]) -> NDArray[np.intp]:
        """ModiPick per row."""
        layout = ObsLayout.from_obs_dim(obs.shape[1])
        req, models = layout.request(obs), layout.models(obs)
        return modipick_select(
            req[:, BUDGET].astype(np.float64),
            models[:, :, MU],
            models[:, :, SIGMA],
            models[:, :, ACC],
            np.asarray(self._rng.random(obs.shape[0]), dtype=np.float64),
            self.threshold_ms,
        )


def _is_stateless(network: NetworkModel) -> bool:
    return isinstance(network, _STATELESS_NETWORKS)


def sample_twins(
    network: NetworkModel,
    rng: np.random.Generator,
    ctx: BlockContext,
    twins: Sequence[BlockContext],
) -> tuple[tuple[F64, F64], list[tuple[F64, F64]]]:
    """Upload/download times of the same requests under other payloads, from one network state.

    Each twin context is sampled on a copy of the network (the stateless trace and Gaussian
    networks are used as they are) with a copy of the generator's state; then ``ctx`` is
    sampled on the real network, which advances it and the generator exactly as one ``sample``
    call would. Every sample sees the same latent link conditions (RTT, bandwidths, trace
    position), so the outcomes are each other's counterfactuals.
    Returns ``((t_in, t_out) of ctx, [(t_in, t_out) of each twin])``.
    """
    state = copy.deepcopy(rng.bit_generator.state)
    out = []
    for twin_ctx in twins:
        twin = network if _is_stateless(network) else copy.deepcopy(network)
        twin_rng = np.random.Generator(type(rng.bit_generator)())
        twin_rng.bit_generator.state = copy.deepcopy(state)
        t_in, t_out = twin.sample(twin_rng, twin_ctx)
        out.append((np.asarray(t_in, dtype=np.float64), np.asarray(t_out, dtype=np.float64)))
    t_in, t_out = network.sample(rng, ctx)
    return (np.asarray(t_in, dtype=np.float64), np.asarray(t_out, dtype=np.float64)), out


@dataclass
class OffloadOutcome:
    """What happened to one request per stream (arrays ``(N,)``); 0 where a part did not happen
    (e.g. ``exec_ms`` of a local request: see ``placement`` and ``backup``). Times in ms, energy
    in mJ, sizes in bytes."""

    prep: I64  # effective preprocessing location (PREP_DEVICE for local requests)
    placement: I64  # on-device model index, or L for offload
    backup: NDArray[np.bool_]  # backup actually run (offloaded and asked for)
    probe: NDArray[np.bool_]  # the device probed the uplink at this capture (probe_every_ms)
    server_model: I64  # -1 when not offloaded
    sla_ms: F64
    megapixels: F64
    raw_bytes: F64
    pre_bytes: F64
    bytes_sent: F64
    bytes_received: F64
    device_prep_ms: F64  # 0 when the device did not preprocess
    t_input_ms: F64
    server_prep_ms: F64
    queue_ms: F64
    exec_ms: F64
    t_output_ms: F64
    preexec_ms: F64
    remote_e2e_ms: F64
    local_load_ms: F64
    local_exec_ms: F64
    local_e2e_ms: F64
    backup_load_ms: F64
    backup_exec_ms: F64
    backup_done_ms: F64
    e2e_ms: F64
    met: NDArray[np.bool_]
    answered_by: I64
    accuracy: F64
    compute_mj: F64
    radio_mj: F64
    energy_mj: F64
    reward: F64
    cf_preexec_device_ms: F64
    cf_preexec_server_ms: F64

    def info(self, i: int) -> dict[str, Any]:
        """The info dict of stream ``i`` (Python scalars)."""
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            x = v[i]
            out[k] = (
                bool(x) if v.dtype == np.bool_ else (int(x) if v.dtype.kind in "iu" else float(x))
            )
        return out

    def infos(self) -> dict[str, Any]:
        """The vector env's infos: one array per field (copies)."""
        return {k: np.array(v, copy=True) for k, v in self.__dict__.items()}


INFO_KEYS: tuple[str, ...] = tuple(OffloadOutcome.__dataclass_fields__)


class OffloadSim:
    """``N`` devices, each capturing a stream of images and deciding where each one is handled.

    Args:
        device: the phone (:class:`~modi.envs.devices.DeviceProfile`): tier, preprocessing
            time, on-device pool with inference/load-time distributions, compute power, images.
        network: a :class:`~modi.envs.networks.NetworkModel` whose upload time depends on the
            payload (a link or trace network); the papers' Gaussian network ignores payload
            size, which makes the preprocessing location irrelevant to the upload (a warning).
        server_pool: the server's models and their profiled times.
        num_envs: number of independent devices (streams) ``N``; each has its own server.
        sla_ms: fixed SLA (one number or ``N``); ``sla_range_ms``: uniform SLA per request.
        server_policy: chooses the server model of offloaded requests from the runtime's
            observation; ``None`` or ``"modipick"``: :class:`ServerModiPick` (threshold 10 ms).
        images: image distribution (:class:`~modi.envs.images.ImageModel` or its keyword
            arguments); ``None``: the device's own.
        arrival_rate_hz: mean Poisson capture rate per device.
        response_kb: size of the server's answer.
        radio: radio energy model, ``"wifi"``, ``"lte"``, ``"3g"`` or a
            :class:`~modi.envs.devices.RadioEnergy` / mapping.
        energy_cost_per_j: reward cost per joule of device energy (default 0).
        bandwidth_cost_per_mb: reward cost per MB uploaded (default 0).
        miss_penalty: subtracted from the reward when no answer arrives within the SLA.
        backup_model: id of the on-device backup model (default: the device's, else its
            fastest model).
        resident_backup: keep the backup model loaded all the time (MDInference's always-ready
            backup; default). Otherwise it competes for the model cache like any other.
        cache_models: how many other on-device models stay in memory (LRU); running a model
            not in memory first loads it (its measured load time).
        server_prep: server preprocessing time model (:class:`~modi.envs.devices.Preprocessing`
            keyword arguments); default ``2 ms + 8 ms/MP`` with CV 0.1 — an assumption: a
            server CPU several times faster than the phones.
        profile_alpha, reprofile_every: the server's EWMA profile tracker and re-profiling of
            stale models (as in :class:`~modi.envs.simulator.ModelSelectionSim`).
        true_server_pool: the server's real execution-time distributions (default
            ``server_pool``).
        probe_every_ms: when the device's newest network measurement is older than this and
            nothing is in flight, a request it does not offload carries an uplink probe
            (``PROBE_BYTES`` uploaded, one response back: bytes and radio energy charged to
            that request, ``info["probe"]``); ``None`` (default): only the start-up probe.
        block_len: captures per device drawn ahead in one block (default: as many as fit a
            fixed memory budget, 16-2048). A rollout of ``T`` captures draws
            ``ceil(T / block_len)`` blocks: short evaluations are faster with ``block_len = T``.
            The requests depend on it (same seed and block length: the same requests).

    The device's network history (the ``net_*`` observation columns) holds only what the device
    has measured *and received* by the capture: the start-up probe, then each offloaded
    request's response latency and upload bandwidth from the time its response arrives, and
    each probe's from its completion (DESIGN.md §1). A request run locally measures nothing.
    """

    def __init__(
        self,
        device: DeviceProfile,
        network: NetworkModel,
        server_pool: ModelPool,
        num_envs: int = 1,
        sla_ms: float | Sequence[float] = 1000.0,
        sla_range_ms: tuple[float, float] | None = None,
        server_policy: ServerPolicy | str | None = None,
        images: ImageModel | Mapping[str, Any] | None = None,
        arrival_rate_hz: float = 1.0,
        response_kb: float = 1.0,
        radio: str | RadioEnergy | Mapping[str, Any] = "wifi",
        energy_cost_per_j: float = 0.0,
        bandwidth_cost_per_mb: float = 0.0,
        miss_penalty: float = 0.0,
        backup_model: str | None = None,
        resident_backup: bool = True,
        cache_models: int = 1,
        server_prep: Mapping[str, Any] | Preprocessing | None = None,
        profile_alpha: float = 0.1,
        reprofile_every: int = 200,
        true_server_pool: ModelPool | None = None,
        probe_every_ms: float | None = None,
        block_len: int | None = None,
    ) -> None:
        if not isinstance(device, DeviceProfile):
            raise OffloadError(f"device must be a DeviceProfile, got {type(device).__name__}")
        if not isinstance(server_pool, ModelPool):
            raise OffloadError(f"pool must be a ModelPool, got {type(server_pool).__name__}")
        if (
            isinstance(num_envs, bool)
            or not isinstance(num_envs, (int, np.integer))
            or num_envs < 1
        ):
            raise OffloadError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        sla = np.atleast_1d(np.asarray(sla_ms, dtype=np.float64))
        if sla.ndim != 1 or sla.size not in (1, num_envs):
            raise OffloadError(f"sla_ms must be one number or {num_envs} numbers, got {sla_ms}")
        if not np.all(np.isfinite(sla)) or np.any(sla <= 0):
            raise OffloadError(f"sla_ms must be > 0, got {sla.tolist()}")
        if sla_range_ms is not None:
            lo, hi = (float(x) for x in sla_range_ms)
            if not 0 < lo <= hi:
                raise OffloadError(f"sla_range_ms must satisfy 0 < low <= high, got {sla_range_ms}")
            sla_range_ms = (lo, hi)
        for name, value, strict in (
            ("arrival_rate_hz", arrival_rate_hz, True),
            ("response_kb", response_kb, True),
            ("energy_cost_per_j", energy_cost_per_j, False),
            ("bandwidth_cost_per_mb", bandwidth_cost_per_mb, False),
            ("miss_penalty", miss_penalty, False),
        ):
            v = float(value)
            if not math.isfinite(v) or v < 0 or (strict and v == 0):
                raise OffloadError(f"{name} must be {'> 0' if strict else '>= 0'}, got {value!r}")
        if (
            isinstance(cache_models, bool)
            or not isinstance(cache_models, (int, np.integer))
            or (cache_models < 0)
        ):
            raise OffloadError(f"cache_models must be an integer >= 0, got {cache_models!r}")
        if reprofile_every < 0:
            raise OffloadError(f"reprofile_every must be >= 0, got {reprofile_every}")
        true_server_pool = server_pool if true_server_pool is None else true_server_pool
        if len(true_server_pool) != len(server_pool):
            raise OffloadError("true_server_pool must have the same models as pool")

        self.device = device
        self.network = network
        self.pool = server_pool
        self.num_envs = int(num_envs)
        self.num_local = len(device.models)
        self.num_models = len(server_pool)
        self.sla_ms = np.broadcast_to(sla, (self.num_envs,)).copy()
        self.sla_range_ms = sla_range_ms
        self.server_policy: ServerPolicy = ServerModiPick()
        self.set_server_policy(server_policy)
        if images is None:
            self.images = device.images
        elif isinstance(images, ImageModel):
            self.images = images
        else:
            self.images = ImageModel(**dict(images))
        self.arrival_rate_hz = float(arrival_rate_hz)
        self.response_bytes = float(response_kb) * 1e3
        self.radio = radio_profile(radio)
        self.energy_cost_per_j = float(energy_cost_per_j)
        self.bandwidth_cost_per_mb = float(bandwidth_cost_per_mb)
        self.miss_penalty = float(miss_penalty)
        if backup_model is None:
            self.backup_index = device.backup_index
        elif backup_model in device.ids:
            self.backup_index = device.ids.index(backup_model)
        else:
            raise OffloadError(
                f"backup_model {backup_model!r} is not an on-device model of {device.name!r}; "
                f"expected one of {list(device.ids)}"
            )
        self.resident_backup = bool(resident_backup)
        self.cache_models = int(cache_models)
        if server_prep is None:
            self.server_prep = Preprocessing(**DEFAULT_SERVER_PREP)
        elif isinstance(server_prep, Preprocessing):
            self.server_prep = server_prep
        else:
            try:
                self.server_prep = Preprocessing(**dict(server_prep))
            except (TypeError, DeviceError) as e:
                raise OffloadError(f"server_prep: {e}") from None
        self.reprofile_every = int(reprofile_every)
        if probe_every_ms is not None:
            pe = float(probe_every_ms)
            if not pe > 0:
                raise OffloadError(f"probe_every_ms must be > 0 or None, got {probe_every_ms!r}")
            probe_every_ms = pe
        self.probe_every_ms = probe_every_ms

        # device constants
        self.local_acc = np.array([m.accuracy for m in device.models])
        self.local_mu = np.array([m.mean_ms for m in device.models])
        self.local_sigma = np.array([m.std_ms for m in device.models])
        self.local_load = np.array([m.load_mean_ms for m in device.models])
        self._exec_tables = [m.exec_ms for m in device.models]
        self._load_tables = [m.load_ms for m in device.models]
        self.power_w = device.compute_power_w
        # server constants
        self.server_acc = server_pool.accuracy
        self._true_mu = true_server_pool.mean_ms
        self._true_sigma = true_server_pool.std_ms
        self._empirical = [
            (k, np.sort(np.asarray(m.samples_ms)))
            for k, m in enumerate(true_server_pool.models)
            if m.samples_ms is not None
        ]
        self.tracker = ProfileTracker(
            server_pool.mean_ms, server_pool.std_ms, self.num_envs, profile_alpha
        )

        self.obs_dim = dfeat.obs_dim(self.num_local)
        self.action_nvec = np.array([2, self.num_local + 1, 2], dtype=np.int64)
        n = self.num_envs
        self.block_len = 256 if n == 1 else int(np.clip(_BLOCK_FLOATS // (n * 24), 16, 2048))
        if block_len is not None:
            if isinstance(block_len, bool) or not isinstance(block_len, (int, np.integer)):
                raise OffloadError(f"block_len must be an integer >= 1, got {block_len!r}")
            if block_len < 1:
                raise OffloadError(f"block_len must be an integer >= 1, got {block_len!r}")
            self.block_len = int(block_len)
        self._rows = np.arange(n)
        self.obs = np.zeros((n, self.obs_dim), dtype=np.float32)
        self._model_rows = dfeat.encode_device_models(
            self.local_mu,
            self.local_sigma,
            self.local_acc,
            self.local_load,
            np.zeros(self.num_local),
            self.backup_index,
        )
        self._rng = np.random.default_rng()
        self._net_rng = np.random.default_rng()
        self._profile_rng = np.random.default_rng()
        self._rtt_rng = np.random.default_rng()
        self._warned_flat_network = False
        self.step_count = 0
        self._cursor = 0
        self._init_state()

    # ------------------------------------------------------------------ state
    def _init_state(self) -> None:
        n, big_l = self.num_envs, self.num_local
        self._clock_ms = np.zeros(n)
        self.loaded = np.zeros((n, big_l), dtype=np.bool_)
        self._last_used = np.zeros((n, big_l), dtype=np.int64)
        self._pinned = np.zeros(big_l, dtype=np.bool_)
        if self.resident_backup:
            self._pinned[self.backup_index] = True
            self.loaded[:, self.backup_index] = True
        self._srv_mean = np.full(n, np.nan)
        self._srv_var = np.zeros(n)
        # what the server's TCP stack knows of each device's connection (modi.envs.rtt), and
        # the download history the phone sends with each request (schema v4's client_dl_*):
        # the server selector's features, as in the model-selection simulator
        self._tcp_srtt = np.full(n, np.nan)
        self._tcp_rttvar = np.zeros(n)
        # uploads sent but not yet folded into the server's view: when each reaches the server
        # (inf: free slot), its upload time, and its RTT sample and gains (upload_samples),
        # ``(N, K)``
        self._up_done = np.full((n, _PENDING_SLOTS), np.inf)
        self._up_tin = np.zeros((n, _PENDING_SLOTS))
        self._up_sample = np.zeros((n, _PENDING_SLOTS))
        self._up_gs = np.zeros((n, _PENDING_SLOTS))
        self._up_gv = np.zeros((n, _PENDING_SLOTS))
        # executions not yet folded into the server's profiles (DESIGN.md §1: a profile
        # learns an execution once it has finished): when each finishes (inf: free slot), the
        # model and its execution time, ``(N, K)``
        self._ex_done = np.full((n, _PENDING_SLOTS), np.inf)
        self._ex_model = np.zeros((n, _PENDING_SLOTS), dtype=np.intp)
        self._ex_ms = np.zeros((n, _PENDING_SLOTS))
        self._client_dl = np.full(n, np.nan)
        self._client_dlvar = np.full(n, np.nan)
        self._client_mismatch = np.full(n, np.nan)
        self._dev_lat = np.zeros(n)
        self._dev_bw = np.zeros(n)
        self._dev_bw_var = np.zeros(n)
        self._dev_last_ms = np.zeros(n)
        self._dev_bw_last = np.zeros(n)
        # measurements still in flight: completion time (inf: free slot), latency, bandwidth,
        # and the time the measurement describes (the request's capture), ``(N, K)``
        k = _PENDING_SLOTS
        self._pend_done = np.full((n, k), np.inf)
        self._pend_lat = np.zeros((n, k))
        self._pend_bw = np.zeros((n, k))
        self._pend_time = np.zeros((n, k))
        self._pend_up = np.full((n, k), np.nan)  # the answer's upload time (NaN: a probe)
        self._probing = np.zeros(n, dtype=np.bool_)

    def reset(self, seed: int | Sequence[int] | None = None) -> NDArray[np.float32]:
        """Start every device afresh from ``seed`` (an integer or a sequence of them, e.g. a
        stream key); return the first observations ``(N, D)``."""
        ss = np.random.SeedSequence(seed)
        # the fifth child leaves the first four (and so every stream drawn before it) as they were
        req_ss, net_ss, prof_ss, pol_ss, rtt_ss = ss.spawn(5)
        self._rng = np.random.default_rng(req_ss)
        self._net_rng = np.random.default_rng(net_ss)
        self._profile_rng = np.random.default_rng(prof_ss)
        self._rtt_rng = np.random.default_rng(rtt_ss)
        self.server_policy.reset(2 * self.num_envs, int(pol_ss.generate_state(1)[0]))
        self.network.reset(self._net_rng, self.num_envs, 1)
        self.tracker.reset()
        self._init_state()
        self.step_count = 0
        self._probe()
        self._new_block()
        self._arrive()
        return self.obs

    def reset_state(self, rows: NDArray[np.bool_]) -> None:
        """Forget what the servers learned and unload on-device models for the given streams
        (at episode boundaries; the request streams go on)."""
        self.tracker.reset(rows)  # executions still running are learned when they finish,
        # as uploads still on the way enter the upload history when they arrive
        self._srv_mean[rows] = np.nan
        self._srv_var[rows] = 0.0
        self.loaded[rows] = self._pinned
        self._last_used[rows] = 0
        self._arrive()

    def set_server_policy(self, policy: ServerPolicy | str | None) -> None:
        """Swap the server side (takes effect at the next :meth:`reset`)."""
        if policy is None or policy == "modipick":
            policy = ServerModiPick()
        if isinstance(policy, str) or not isinstance(policy, ServerPolicy):
            raise OffloadError(
                "server_policy must be None, 'modipick' or an object with name, reset(num_envs, "
                f"seed) and select(obs), got {policy!r}"
            )
        self.server_policy = policy

    def _probe(self) -> None:
        """The device's first network measurement, at time 0 before its first capture."""
        shape = (1, self.num_envs)
        zeros = np.zeros(shape, dtype=np.int64)
        small, large = self._probe_contexts(zeros, np.zeros(shape))
        (t_small, t_out), [(t_large, _)] = sample_twins(self.network, self._net_rng, small, [large])
        self._dev_lat = t_out[0].copy()
        self._dev_bw = self._uplink_mbps(t_large - t_small)[0]
        self._dev_bw_var = np.zeros(self.num_envs)
        self._dev_bw_last = self._dev_bw.copy()
        self._dev_last_ms = np.zeros(self.num_envs)

    def _fold_measurements(self, now: F64) -> None:
        """Fold every in-flight measurement completed by ``now`` (per device) into the
        device's network history, in completion order (DESIGN.md §1: a measurement is known
        only once it has completed)."""
        a = dfeat.DEVICE_NET_ALPHA
        while True:
            done = self._pend_done
            j = done.argmin(axis=1)
            first = done[self._rows, j]
            ready = first <= now
            if not ready.any():
                return
            r, jj = self._rows[ready], j[ready]
            bw, lat = self._pend_bw[r, jj], self._pend_lat[r, jj]
            self._dev_lat[r], self._dev_bw[r], self._dev_bw_var[r] = dfeat.fold_measurement(
                self._dev_lat[r], self._dev_bw[r], self._dev_bw_var[r], lat, bw, a
            )
            self._dev_bw_last[r] = bw
            self._dev_last_ms[r] = self._pend_time[r, jj]
            self._pend_done[r, jj] = np.inf
            # an answer (not a probe) also enters the download history the phone sends
            up = self._pend_up[r, jj]
            ans = ~np.isnan(up)
            if ans.any():
                ra = r[ans]
                self._client_dl[ra], self._client_dlvar[ra], self._client_mismatch[ra] = (
                    client_history_update(
                        self._client_dl[ra], self._client_dlvar[ra], self._client_mismatch[ra],
                        lat[ans], up[ans],
                    )
                )  # fmt: skip

    def _push_measurements(
        self,
        rows: NDArray[np.intp],
        done_ms: F64,
        lat: F64,
        bw: F64,
        time_ms: F64,
        upload_ms: F64 | None = None,
    ) -> None:
        """Queue measurements of ``rows`` (distinct) that complete at ``done_ms``; with
        ``upload_ms`` (the request's upload time), answers that also enter the phone's download
        history (``None``: probes)."""
        if rows.size == 0:
            return
        fills = {"_pend_lat": 0.0, "_pend_bw": 0.0, "_pend_time": 0.0, "_pend_up": np.nan}
        slot = self._free_slots("_pend_done", fills, rows)
        self._pend_done[rows, slot] = done_ms
        self._pend_lat[rows, slot] = lat
        self._pend_bw[rows, slot] = bw
        self._pend_time[rows, slot] = time_ms
        self._pend_up[rows, slot] = np.nan if upload_ms is None else upload_ms

    def _free_slots(
        self, done: str, fills: Mapping[str, float], rows: NDArray[np.intp]
    ) -> NDArray[np.intp]:
        """A free slot per row of ``rows`` in the pending arrays ``done`` (completion times,
        inf: free) and ``fills`` (name: fill value), all of them widened when a row has none."""
        free = np.isinf(getattr(self, done)[rows])
        if not free.any(axis=1).all():
            n, k = getattr(self, done).shape
            for name, fill in {done: np.inf, **fills}.items():
                grown = np.concatenate([getattr(self, name), np.full((n, k), fill)], axis=1)
                setattr(self, name, grown)
            free = np.isinf(getattr(self, done)[rows])
        return np.asarray(free.argmax(axis=1), dtype=np.intp)

    def _server_state_at(self, time_ms: F64, commit: bool = False) -> tuple[F64, F64, F64, F64]:
        """What the server knows of each device's uploads at ``time_ms``: the connection's
        ``(srtt, rttvar)`` and the EWMA of the upload times ``(mean, var)``, with the uploads
        that reached the server by then folded in, in arrival order. ``time_ms`` has one entry
        per device, or per device for each of several views (``(V * N,)``, device ``i % N``);
        ``commit`` (one per device): free the folded slots and store the state."""
        t = np.asarray(time_ms, dtype=np.float64)
        n = self.num_envs
        reps = t.size // n
        done = self._up_done if reps == 1 else np.tile(self._up_done, (reps, 1))
        state = (self._tcp_srtt, self._tcp_rttvar, self._srv_mean, self._srv_var)
        if reps > 1:
            state = tuple(np.tile(x, reps) for x in state)  # type: ignore[assignment]
        due = done <= t[:, None]
        if not due.any():
            return state
        s, v, m, w = (x.copy() for x in state)
        rows = np.arange(t.size)
        order = np.argsort(np.where(due, done, np.inf), axis=1, kind="stable")
        for k in range(int(due.sum(axis=1).max())):
            j = order[:, k]
            use = due[rows, j]
            r, jj = rows[use], j[use]
            src = r % n  # the device whose pending upload this is
            s[r], v[r] = fold_sample(
                s[r], v[r], self._up_sample[src, jj], self._up_gs[src, jj], self._up_gv[src, jj]
            )
            m[r], w[r] = upload_history_update(m[r], w[r], self._up_tin[src, jj])
        if commit:
            self._up_done[due] = np.inf
            self._tcp_srtt, self._tcp_rttvar, self._srv_mean, self._srv_var = s, v, m, w
        return s, v, m, w

    def _push_execution(
        self, rows: NDArray[np.intp], done_ms: F64, models: NDArray[np.intp], exec_ms: F64
    ) -> None:
        """Queue the server executions of ``rows`` (distinct) finishing at ``done_ms``."""
        slot = self._free_slots("_ex_done", {"_ex_model": 0, "_ex_ms": 0.0}, rows)
        self._ex_done[rows, slot] = done_ms
        self._ex_model[rows, slot] = models
        self._ex_ms[rows, slot] = exec_ms

    def _fold_executions(self, now: F64) -> None:
        """Fold every execution finished by ``now`` (per device) into the server's profiles,
        in completion order."""
        while True:
            done = self._ex_done
            j = done.argmin(axis=1)
            ready = done[self._rows, j] <= now
            if not ready.any():
                return
            r, jj = self._rows[ready], j[ready]
            self.tracker.update(r, self._ex_model[r, jj], self._ex_ms[r, jj], self.step_count)
            self._ex_done[r, jj] = np.inf

    def _push_upload(self, rows: NDArray[np.intp], done_ms: F64, pre: NDArray[np.bool_]) -> None:
        """Queue the current request's uploads of ``rows`` (distinct; ``pre``: the preprocessed
        payload, else the raw image) reaching the server at ``done_ms``."""
        fills = {"_up_tin": 0.0, "_up_sample": 0.0, "_up_gs": 0.0, "_up_gv": 0.0}
        slot = self._free_slots("_up_done", fills, rows)
        i = self._cursor
        self._up_done[rows, slot] = done_ms
        self._up_tin[rows, slot] = np.where(
            pre, self._blk_tin_pre[i][rows], self._blk_tin_raw[i][rows]
        )
        for name, a, b in zip(("_up_sample", "_up_gs", "_up_gv"), self._blk_rtt_pre,
                              self._blk_rtt_raw, strict=True):  # fmt: skip
            getattr(self, name)[rows, slot] = np.where(pre, a[i][rows], b[i][rows])

    def _probe_contexts(self, client: I64, time_ms: F64) -> tuple[BlockContext, BlockContext]:
        """A small and a large bandwidth probe at the given times (what the device measures)."""
        resp = np.full(client.shape, self.response_bytes)
        small = BlockContext(client, time_ms, np.full(client.shape, PROBE_BYTES[0]), resp)
        large = BlockContext(client, time_ms, np.full(client.shape, PROBE_BYTES[1]), resp)
        return small, large

    @staticmethod
    def _uplink_mbps(delta_ms: F64) -> F64:
        """Uplink bandwidth from the upload times' difference between the two probes."""
        with np.errstate(divide="ignore", invalid="ignore"):
            mbps = 8.0 * (PROBE_BYTES[1] - PROBE_BYTES[0]) / delta_ms / 1e3
        return np.where(delta_ms > 0, np.clip(mbps, 1e-3, MAX_UPLINK_MBPS), MAX_UPLINK_MBPS)

    # ------------------------------------------------------------------ stream generation
    def _new_block(self) -> None:
        """Draw the next ``block_len`` requests of every device (action-independent)."""
        rng = self._rng
        b, n = self.block_len, self.num_envs
        shape = (b, n)
        gaps = rng.exponential(1000.0 / self.arrival_rate_hz, size=shape)
        time_ms = self._clock_ms + np.cumsum(gaps, axis=0)
        self._clock_ms = time_ms[-1].copy()
        if self.sla_range_ms is not None:
            sla = rng.uniform(self.sla_range_ms[0], self.sla_range_ms[1], size=shape)
        else:
            sla = np.broadcast_to(self.sla_ms, shape).copy()
        img = self.images.sample(rng, shape)
        prep_mean = self.device.preprocessing.mean_ms(img.megapixels)
        t_dp = prep_mean * self.device.preprocessing.noise(rng.standard_normal(shape))
        z_sp = rng.standard_normal(shape)
        noise_sp = self.server_prep.noise(z_sp)
        t_sp_raw = self.server_prep.mean_ms(img.megapixels) * noise_sp
        t_sp_pre = self.server_prep.mean_ms(np.full(shape, INPUT_MEGAPIXELS)) * noise_sp
        self._blk_z = rng.standard_normal(shape)
        self._blk_u_srv = rng.random(shape) if self._empirical else None
        self._blk_u_exec = rng.random(shape)
        self._blk_u_load = rng.random(shape)

        client = np.zeros(shape, dtype=np.int64)
        resp = np.full(shape, self.response_bytes)
        ctx_pre = BlockContext(client, time_ms + t_dp, img.pre_bytes, resp)
        ctx_raw = BlockContext(client, time_ms, img.raw_bytes, resp)
        probe_small, probe_large = self._probe_contexts(client, time_ms)
        (t_in_pre, t_out_pre), twins = sample_twins(
            self.network, self._net_rng, ctx_pre, [ctx_raw, probe_small, probe_large]
        )
        (t_in_raw, t_out_raw), (t_small, t_out_probe), (t_large, _) = twins
        # the RTT the upload saw (the same latent link for either payload) and the noise of the
        # server's RTT samples (their own generator: every earlier draw stays as it was)
        up_rtt = getattr(self.network, "upload_rtt_ms", None)
        rtt = (
            np.asarray(up_rtt, dtype=np.float64)
            if up_rtt is not None and np.shape(up_rtt) == shape
            else np.full(shape, np.nan)
        )
        z = self._rtt_rng.standard_normal(shape)
        # each payload's RTT sample and gains (modi.envs.rtt.upload_samples), for the block
        self._blk_rtt_pre = upload_samples(rtt, t_in_pre, z)
        self._blk_rtt_raw = upload_samples(rtt, t_in_raw, z)
        if not self._warned_flat_network and np.allclose(t_in_pre, t_in_raw):
            log.warning(
                "network %r gives the same upload time for the raw image and the preprocessed "
                "payload: the preprocessing location does not change the upload here",
                getattr(self.network, "name", self.network),
            )
            self._warned_flat_network = True

        # what the device would measure from its own upload of each request: the link's uplink
        # bandwidth at the capture (two-payload twins of the same network state); it enters the
        # device's history only if the request is offloaded, when its response arrives (step)
        self._blk_bw = self._uplink_mbps(t_large - t_small)
        # an explicit probe (probe_every_ms): both payloads one after the other, then a response
        self._blk_probe_ms = t_small + t_large
        self._blk_tout_probe = t_out_probe

        self._blk_time = time_ms
        self._blk_sla = sla
        self._blk_mp = img.megapixels
        self._blk_raw = img.raw_bytes
        self._blk_pre = img.pre_bytes
        self._blk_tdp = t_dp
        self._blk_tsp_raw = t_sp_raw
        self._blk_tsp_pre = t_sp_pre
        self._blk_tin_pre, self._blk_tout_pre = t_in_pre, t_out_pre
        self._blk_tin_raw, self._blk_tout_raw = t_in_raw, t_out_raw
        self._blk_req = dfeat.encode_device_requests(
            sla,
            img.megapixels,
            img.raw_bytes,
            prep_mean,
            self.device.tier_index,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            self.radio.active_mw / 1e3,  # the phone knows which radio it is on
        )
        self._cursor = 0

    def _arrive(self) -> None:
        """Encode the current requests: the device's observation, and the server's choice for
        either preprocessing location (decided from what the server would see on arrival)."""
        i = self._cursor
        n = self.num_envs
        obs = self.obs
        now = self._blk_time[i]
        self._fold_measurements(now)
        self._fold_executions(now)
        if self.probe_every_ms is not None:
            # a device whose newest measurement is older than probe_every_ms, with nothing in
            # flight, probes the uplink at this capture (costs charged to this request)
            idle = np.isinf(self._pend_done).all(axis=1)
            self._probing = idle & (now - self._dev_last_ms > self.probe_every_ms)
        obs[:, : dfeat.R] = self._blk_req[i]
        obs[:, dfeat.NET_LATENCY] = self._dev_lat
        obs[:, dfeat.NET_UPLINK] = self._dev_bw
        obs[:, dfeat.NET_UPLINK_STD] = np.sqrt(self._dev_bw_var)
        obs[:, dfeat.NET_AGE] = now - self._dev_last_ms
        obs[:, dfeat.NET_UPLINK_LAST] = self._dev_bw_last
        rows = obs[:, dfeat.R :].reshape(n, self.num_local, dfeat.P)
        rows[:] = self._model_rows
        rows[:, :, dfeat.LOADED] = self.loaded
        # the server's view of this request for each preprocessing location (2N rows)
        t_in = np.concatenate([self._blk_tin_pre[i], self._blk_tin_raw[i]])
        elapsed = np.concatenate(
            [
                self._blk_tdp[i] + self._blk_tin_pre[i] + self._blk_tsp_pre[i],
                self._blk_tin_raw[i] + self._blk_tsp_raw[i],
            ]
        )
        payload_kb = np.concatenate([self._blk_pre[i], self._blk_raw[i]]) / 1e3
        # what the server knows on this request's arrival (for either payload): the device's
        # earlier uploads that reached it before (upload-time history, the connection's RTT),
        # in arrival order, and the RTT samples of this upload itself. Every later request
        # arrives after this capture, so the uploads done by now are folded for good.
        self._server_state_at(now, commit=True)
        arrive = np.concatenate([now + self._blk_tdp[i], now]) + t_in
        srtt, rttvar, hist, hist_var = self._server_state_at(arrive)
        srtt, rttvar = fold_sample(
            srtt, rttvar, *(np.concatenate([a[i], b[i]]) for a, b in
                            zip(self._blk_rtt_pre, self._blk_rtt_raw, strict=True))
        )  # fmt: skip
        first = np.isnan(hist)
        net_mean = np.where(first, t_in, hist)
        net_std = np.where(first, 0.0, np.sqrt(hist_var))
        sla = np.tile(self._blk_sla[i], 2)
        mu = np.tile(self.tracker.mu, (2, 1))
        sigma = np.tile(self.tracker.sigma, (2, 1))
        self.server_obs = encode(
            sla, elapsed, t_in, payload_kb, net_mean, net_std, 0.0, 1.0, mu, sigma,
            self.server_acc, srtt, rttvar,
            np.tile(self._client_dl, 2), np.tile(self._client_dlvar, 2),
            np.tile(self._client_mismatch, 2),
        )  # fmt: skip
        choice = np.asarray(self.server_policy.select(self.server_obs)).reshape(-1)
        if choice.shape != (2 * n,) or choice.min() < 0 or choice.max() >= self.num_models:
            raise OffloadError(
                f"server_policy {self.server_policy.name!r} returned {choice.tolist()[:6]}...: "
                f"expected {2 * n} model indices in [0, {self.num_models})"
            )
        self._server_choice = choice.astype(np.int64).reshape(2, n)

    # ------------------------------------------------------------------ outcomes
    def check_actions(self, actions: NDArray[Any] | Sequence[Any]) -> I64:
        """``actions`` as an ``(N, 3)`` integer array, or an :class:`OffloadError` naming the
        component that is outside the action space."""
        a = np.asarray(actions)
        n = self.num_envs
        if a.shape != (n, 3):
            if a.size == 3 * n:
                a = a.reshape(n, 3)
            else:
                raise OffloadError(
                    f"expected actions of shape ({n}, 3) (preprocessing, placement, backup), got "
                    f"an array of shape {np.shape(actions)}"
                )
        if a.dtype.kind not in "iu" and (a.dtype.kind != "f" or not np.all(np.mod(a, 1) == 0)):
            raise OffloadError(f"actions must be integers, got {a.tolist()}")
        a = a.astype(np.int64)
        names = ("preprocessing (0 device, 1 server)", "placement", "backup (0 off, 1 on)")
        for c in range(3):
            hi = int(self.action_nvec[c])
            bad = (a[:, c] < 0) | (a[:, c] >= hi)
            if bad.any():
                what = names[c]
                if c == ACTION_PLACEMENT:
                    models = list(self.device.ids)
                    what += f" (0..{hi - 2}: on-device models {models}, {hi - 1}: offload)"
                raise OffloadError(
                    f"action component {c}, {what}, must be in [0, {hi}), got "
                    f"{a[bad, c].tolist()[:5]}"
                )
        return a

    def _outcome(self, a: I64, rows: NDArray[np.intp] | None = None) -> OffloadOutcome:
        """Outcome of actions ``a`` (``(M, 3)``) for the current requests of streams ``rows``
        (default: every stream once, ``M = N``); changes no state."""
        i = self._cursor
        rows = self._rows if rows is None else rows
        n, big_l = rows.size, self.num_local
        prep, place, want_backup = a[:, 0], a[:, 1], a[:, 2] == 1
        local = place < big_l
        offload = ~local
        backup = want_backup & offload
        prep = np.where(local, PREP_DEVICE, prep)
        on_device_prep = prep == PREP_DEVICE
        sla = self._blk_sla[i][rows].astype(np.float64)
        t_dp = self._blk_tdp[i][rows]

        # remote path
        t_in = np.where(on_device_prep, self._blk_tin_pre[i][rows], self._blk_tin_raw[i][rows])
        t_out = np.where(on_device_prep, self._blk_tout_pre[i][rows], self._blk_tout_raw[i][rows])
        t_sp = np.where(on_device_prep, self._blk_tsp_pre[i][rows], self._blk_tsp_raw[i][rows])
        preexec = np.where(on_device_prep, t_dp, 0.0) + t_in + t_sp
        k = self._server_choice[prep, rows]
        ex = self._true_mu[k] + self._true_sigma[k] * self._blk_z[i][rows]
        if self._blk_u_srv is not None:
            for kk, samples in self._empirical:
                sel = k == kk
                if sel.any():
                    q = (self._blk_u_srv[i][rows][sel] * samples.size).astype(np.intp)
                    ex[sel] = samples[np.minimum(q, samples.size - 1)]
        ex = np.maximum(ex, MIN_EXEC_MS)
        remote_e2e = preexec + 0.0 + ex + t_out

        # on-device path (a local model, or the backup)
        m = np.where(local, np.minimum(place, big_l - 1), self.backup_index)
        u_ex, u_ld = self._blk_u_exec[i][rows], self._blk_u_load[i][rows]
        dev_exec = np.empty(n)
        dev_load = np.empty(n)
        for j in np.unique(m):
            sel = m == j
            tab, ltab = self._exec_tables[j], self._load_tables[j]
            dev_exec[sel] = tab[np.minimum((u_ex[sel] * tab.size).astype(np.intp), tab.size - 1)]
            dev_load[sel] = ltab[np.minimum((u_ld[sel] * ltab.size).astype(np.intp), ltab.size - 1)]
        dev_load = np.where(self.loaded[rows, m], 0.0, dev_load)
        dev_e2e = t_dp + dev_load + dev_exec

        absent = np.zeros(n)  # parts that did not happen report 0 (NaN breaks info equality)
        remote_ok = offload & (remote_e2e <= sla)
        backup_ok = backup & (dev_e2e <= sla)
        local_ok = local & (dev_e2e <= sla)
        acc_remote = np.where(remote_ok, self.server_acc[k], 0.0)
        acc_backup = np.where(backup_ok, self.local_acc[m], 0.0)
        acc_local = np.where(local_ok, self.local_acc[m], 0.0)
        remote_wins = remote_ok & (acc_remote >= acc_backup)
        answered = np.where(
            local,
            np.where(local_ok, ANSWER_LOCAL, ANSWER_NONE),
            np.where(remote_wins, ANSWER_REMOTE, np.where(backup_ok, ANSWER_BACKUP, ANSWER_NONE)),
        ).astype(np.int64)
        accuracy = np.where(local, acc_local, np.maximum(acc_remote, acc_backup))
        first_late = np.where(backup, np.minimum(remote_e2e, dev_e2e), remote_e2e)
        e2e = np.select(
            [
                answered == ANSWER_LOCAL,
                answered == ANSWER_REMOTE,
                answered == ANSWER_BACKUP,
                local,
            ],
            [dev_e2e, remote_e2e, dev_e2e, dev_e2e],
            default=first_late,
        )
        met = answered != ANSWER_NONE

        bytes_sent = np.where(
            offload, np.where(on_device_prep, self._blk_pre[i][rows], self._blk_raw[i][rows]), 0.0
        )
        bytes_recv = np.where(offload, self.response_bytes, 0.0)
        # a device that probes the uplink at this capture (it offloads nothing: the upload of an
        # offloaded request is its measurement) pays the probe's bytes and radio energy
        probe = self._probing[rows] & local
        probe_mj = np.where(
            probe,
            self.radio.energy_mj(
                sum(PROBE_BYTES),
                self.response_bytes,
                self._blk_probe_ms[i][rows] + self._blk_tout_probe[i][rows],
            ),
            0.0,
        )
        bytes_sent = bytes_sent + np.where(probe, sum(PROBE_BYTES), 0.0)
        bytes_recv = bytes_recv + np.where(probe, self.response_bytes, 0.0)
        device_prep = np.where(on_device_prep | backup, t_dp, 0.0)
        # the backup stops when the remote answer is back
        backup_busy = np.clip(np.minimum(dev_load + dev_exec, remote_e2e - t_dp), 0.0, None)
        busy = device_prep + np.where(
            local, dev_load + dev_exec, np.where(backup, backup_busy, 0.0)
        )
        compute_mj = self.power_w * busy
        radio_mj = (
            np.where(offload, self.radio.energy_mj(bytes_sent, bytes_recv, t_in + t_out), 0.0)
            + probe_mj
        )
        energy = compute_mj + radio_mj
        reward = (
            accuracy
            - self.energy_cost_per_j * energy / 1e3
            - self.bandwidth_cost_per_mb * bytes_sent / 1e6
            - np.where(met, 0.0, self.miss_penalty)
        )
        return OffloadOutcome(
            prep=prep.astype(np.int64),
            placement=place.astype(np.int64),
            backup=backup,
            probe=probe,
            server_model=np.where(offload, k, -1).astype(np.int64),
            sla_ms=sla,
            megapixels=self._blk_mp[i][rows].copy(),
            raw_bytes=self._blk_raw[i][rows].copy(),
            pre_bytes=self._blk_pre[i][rows].copy(),
            bytes_sent=bytes_sent,
            bytes_received=bytes_recv,
            device_prep_ms=device_prep,
            t_input_ms=np.where(offload, t_in, absent),
            server_prep_ms=np.where(offload, t_sp, absent),
            queue_ms=np.where(offload, 0.0, absent),
            exec_ms=np.where(offload, ex, absent),
            t_output_ms=np.where(offload, t_out, absent),
            preexec_ms=np.where(offload, preexec, absent),
            remote_e2e_ms=np.where(offload, remote_e2e, absent),
            local_load_ms=np.where(local, dev_load, absent),
            local_exec_ms=np.where(local, dev_exec, absent),
            local_e2e_ms=np.where(local, dev_e2e, absent),
            backup_load_ms=np.where(backup, dev_load, absent),
            backup_exec_ms=np.where(backup, dev_exec, absent),
            backup_done_ms=np.where(backup, dev_e2e, absent),
            e2e_ms=e2e,
            met=met,
            answered_by=answered,
            accuracy=accuracy,
            compute_mj=compute_mj,
            radio_mj=radio_mj,
            energy_mj=energy,
            reward=reward,
            cf_preexec_device_ms=t_dp + self._blk_tin_pre[i][rows] + self._blk_tsp_pre[i][rows],
            cf_preexec_server_ms=self._blk_tin_raw[i][rows] + self._blk_tsp_raw[i][rows],
        )

    def all_actions(self) -> I64:
        """Every joint action, ``(A, 3)``, in ``np.ndindex`` order of the action space."""
        return np.array(list(np.ndindex(*self.action_nvec.tolist())), dtype=np.int64)

    def counterfactual_rewards(self) -> tuple[F64, F64, F64]:
        """Rewards, energies (mJ) and delivered latencies (ms) of every joint action for the
        current requests, each ``(N, A)`` with actions in :meth:`all_actions` order.

        Privileged (realised times): only the oracle and tests may look; never an observation.
        """
        acts = self.all_actions()
        n, na = self.num_envs, len(acts)
        o = self._outcome(np.tile(acts, (n, 1)), np.repeat(self._rows, na))
        return (
            o.reward.reshape(n, na),
            o.energy_mj.reshape(n, na),
            o.e2e_ms.reshape(n, na),
        )

    def counterfactual_outcomes(self) -> OffloadOutcome:
        """The outcome of every joint action for the current requests: arrays ``(N * A,)``,
        stream-major, actions in :meth:`all_actions` order (reshape to ``(N, A)``).
        Privileged, like :meth:`counterfactual_rewards` (training targets, never an observation).
        """
        acts = self.all_actions()
        na = len(acts)
        return self._outcome(np.tile(acts, (self.num_envs, 1)), np.repeat(self._rows, na))

    def current_preexec_ms(self) -> F64:
        """Realised pre-execution time of each preprocessing location for the current
        requests, ``(N, 2)`` (device, server). Privileged, like :meth:`counterfactual_rewards`."""
        i = self._cursor
        return np.stack(
            [
                self._blk_tdp[i] + self._blk_tin_pre[i] + self._blk_tsp_pre[i],
                self._blk_tin_raw[i] + self._blk_tsp_raw[i],
            ],
            axis=1,
        )

    def step(self, actions: NDArray[Any] | Sequence[Any]) -> OffloadOutcome:
        """Handle the current request of every device; advance to the next one."""
        a = self.check_actions(actions)
        o = self._outcome(a)
        rows = self._rows
        self.step_count += 1
        # device memory: the model just run (local or backup) is now loaded, LRU eviction
        ran = np.where(a[:, 1] < self.num_local, a[:, 1], -1)
        ran = np.where(o.backup, self.backup_index, ran)
        used = ran >= 0
        if used.any():
            r, mm = rows[used], ran[used]
            self.loaded[r, mm] = True
            self._last_used[r, mm] = self.step_count
            self._evict(r)
        # server: learn the execution time once it has finished, and this device's upload
        # once it has arrived (_fold_executions, _server_state_at)
        off = o.server_model >= 0
        if off.any():
            r = rows[off]
            t_end = self._blk_time[self._cursor][r] + o.preexec_ms[off] + o.exec_ms[off]
            self._push_execution(r, t_end, o.server_model[off], o.exec_ms[off])
            # the upload actually sent: it enters the server's upload-time history and the
            # connection's RTT once it has reached the server (_server_state_at)
            t0 = self._blk_time[self._cursor][r]
            pre = o.prep[off] == PREP_DEVICE
            # a raw upload starts at capture (the phone may still preprocess, for its backup)
            done = t0 + np.where(pre, o.device_prep_ms[off], 0.0) + o.t_input_ms[off]
            self._push_upload(r, done, pre)
        # the device's own network measurements: an offloaded request's response latency and
        # its upload's bandwidth, known when the response arrives; a probe's when it completes
        i = self._cursor
        if off.any():
            r = rows[off]
            t0 = self._blk_time[i][r]
            self._push_measurements(
                r, t0 + o.remote_e2e_ms[off], o.t_output_ms[off], self._blk_bw[i][r], t0,
                upload_ms=o.t_input_ms[off],
            )  # fmt: skip
        probe = self._probing & ~off
        if probe.any():
            r = rows[probe]
            t0 = self._blk_time[i][r]
            lat = self._blk_tout_probe[i][r]
            self._push_measurements(
                r, t0 + self._blk_probe_ms[i][r] + lat, lat, self._blk_bw[i][r], t0
            )
        if self.reprofile_every and self.step_count % self.reprofile_every == 0:
            self._reprofile()
        self._cursor += 1
        if self._cursor == self.block_len:
            self._new_block()
        self._arrive()
        return o

    def _evict(self, rows: NDArray[np.intp]) -> None:
        """Keep at most ``cache_models`` unpinned models loaded per row (least recently used
        go first)."""
        unpinned = self.loaded[rows] & ~self._pinned
        over = unpinned.sum(axis=1) > self.cache_models
        if not over.any():
            return
        for r in rows[over]:
            cand = np.flatnonzero(self.loaded[r] & ~self._pinned)
            order = cand[np.argsort(self._last_used[r, cand], kind="stable")]
            drop = order[: cand.size - self.cache_models]
            self.loaded[r, drop] = False

    def _reprofile(self) -> None:
        """One profiling run of every model the server has not learned within
        ``reprofile_every`` requests, started at the current capture and learned once it has
        finished, as a request's execution is."""
        stale = self.tracker.stale(self.step_count, self.reprofile_every)
        r, k = np.nonzero(stale)
        if r.size:
            z = self._profile_rng.standard_normal(r.size)
            ex = np.maximum(self._true_mu[k] + self._true_sigma[k] * z, MIN_EXEC_MS)
            done = self._blk_time[self._cursor][r] + ex
            for m in np.unique(k):  # the rows of one model are distinct
                sel = k == m
                self._push_execution(r[sel], done[sel], k[sel], ex[sel])


# ============================================================================ Gymnasium
def build_offload_sim(
    device: str | DeviceProfile = "mid",
    network: str | NetworkModel = "wifi_university",
    pool: str | ModelPool = "modipick_table2",
    num_envs: int = 1,
    **kwargs: Any,
) -> OffloadSim:
    """An :class:`OffloadSim` from preset names (``conf/device``, ``conf/network``,
    ``conf/pool``) or objects."""
    dev = load_preset("device", device) if isinstance(device, str) else device
    if not isinstance(dev, DeviceProfile):
        raise OffloadError(f"device must be a preset name or a DeviceProfile, got {device!r}")
    net = load_preset("network", network) if isinstance(network, str) else network
    pool_obj = load_preset("pool", pool) if isinstance(pool, str) else pool
    try:
        return OffloadSim(dev, net, pool_obj, num_envs=num_envs, **kwargs)
    except TypeError as e:
        raise OffloadError(f"Offload-v0: {e}") from None


def _spaces(sim: OffloadSim) -> tuple[Any, Any]:
    obs = spaces.Box(-np.inf, np.inf, shape=(sim.obs_dim,), dtype=np.float32)
    return obs, spaces.MultiDiscrete(sim.action_nvec)


def _table(rows: tuple[tuple[str, str, str], ...]) -> str:
    return "\n".join(f"    | {i} | {n} | {u} | {d} |" for i, (n, u, d) in enumerate(rows))


class OffloadEnv(gym.Env[NDArray[np.float32], NDArray[np.int64]]):
    """Decide, on the phone at capture time, how each inference request is handled.

        ## Description
        A phone (a device tier: low-end Nexus 5, mid-range Moto X4, high-end Pixel 2) captures
        images and needs each one classified within its SLA. At capture it decides where to
        preprocess the image (PieSlicer), whether to run one of its own models or offload to a
        server (MODI, DeepDecision), and whether to start an on-device backup model alongside an
        offloaded request (MDInference). The server's model choice for an offloaded request is
        made *inside* the env by a pluggable server policy (ModiPick by default). One step = one
        captured image. See :mod:`modi.envs.offload` for the timeline.

        ## Action Space
        ``MultiDiscrete([2, L + 1, 2])`` for ``L`` on-device models:

        | index | name | values |
        |---|---|---|
        | 0 | preprocessing | 0 on the device (upload 224x224), 1 on the server (upload raw) |
        | 1 | placement | 0..L-1 that on-device model (``env.unwrapped.device.ids``), L offload |
        | 2 | backup | 0 off, 1 run the backup model on the device in parallel (offload only) |

        A local placement always preprocesses on the device (component 0 is ignored) and never
        starts a backup (component 2 is ignored); ``info`` reports what actually happened.

        ## Observation Space
        ``Box(-inf, inf, (R + 6L,), float32)`` from :mod:`modi.runtime.device_features`
        (schema ``modi.device_decision`` v2). Request block, indices 0..R-1:

        | index | name | unit | meaning |
        |---|---|---|---|
    {device_request_table}

        then one row of 6 per on-device model (model ``l`` at ``R + 6l``):

        | offset | name | unit | meaning |
        |---|---|---|---|
    {device_model_table}

        Only what the device knows at capture (DESIGN.md §1). Never in an observation: this
        request's upload time ``T_input``, its download time ``T_output``, the server's load or
        model choice, the realised preprocessing/inference/load times. The network columns are
        EWMAs of the device's measurements at its *previous* requests (one-way latency of the
        response; uplink bandwidth), started by one probe at time 0, and the most recent of
        those bandwidth measurements itself with its age.

        ## Server side
        An offloaded request is seen by the server policy exactly as the serving runtime would
        encode it (:func:`modi.runtime.features.encode`, schema ``modi.model_selection``), on
        arrival after in-cloud preprocessing: ``t_input_ms`` the measured upload, ``sla_ms`` the
        SLA less the device and the server preprocessing (what every encoder takes off: the
        time that is not the upload; ``elapsed_ms`` is then the upload), ``payload_kb`` what
        was sent, the client history this device's past upload times (offloaded requests only),
        ``queue_len`` 0 and ``slowdown`` 1 (no queue in v0). Request block:

        | index | name | unit | meaning |
        |---|---|---|---|
    {server_request_table}

        and one row per server model:

        | offset | name | unit | meaning |
        |---|---|---|---|
    {server_model_table}

        ## Rewards
        ``effective accuracy - energy_cost_per_j * energy_J - bandwidth_cost_per_mb * MB_sent
        - miss_penalty * (no answer in time)``. Effective accuracy is the top-1 accuracy of the
        answer delivered within the SLA: the local model's; for an offloaded request the remote
        model's, or the backup's when the remote answer is late and the backup finished in time
        (the more accurate of the two when both are in time); 0 when nothing arrived in time.
        Energy (mJ) = compute power x device busy time (preprocessing, loads, inference; the
        backup stops when the remote answer arrives) + radio energy (per byte each way + active
        power during transfers). Costs default to 0.

        ## Starting State
        The device has made one network probe; only the backup model is in memory (when
        ``resident_backup``); the server's profiles are the pool's measured μ/σ.

        ## Episode End
        Never terminates (a stream of captures); the registered id truncates after
        ``max_episode_steps`` (1000) requests.

        ## Info
        The full breakdown of the request just handled: ``prep, placement, backup,
        probe, server_model, sla_ms, megapixels, raw_bytes, pre_bytes, bytes_sent, bytes_received,
        device_prep_ms, t_input_ms, server_prep_ms, queue_ms, exec_ms, t_output_ms,
        preexec_ms, remote_e2e_ms, local_load_ms, local_exec_ms, local_e2e_ms,
        backup_load_ms, backup_exec_ms, backup_done_ms, e2e_ms, met, answered_by (0 none,
        1 remote, 2 backup, 3 local), accuracy, compute_mj, radio_mj, energy_mj, reward``
        (0 for parts that did not happen), and for evaluation the realised pre-execution
        time of both preprocessing locations, ``cf_preexec_device_ms`` and
        ``cf_preexec_server_ms`` (counterfactual, after the fact).

        ## Arguments
        ``device`` (preset name ``low``/``mid``/``high`` or a
        :class:`~modi.envs.devices.DeviceProfile`, default ``mid``), ``network`` (preset name
        or network model, default ``wifi_university``), ``pool`` (server pool, default
        ``modipick_table2``), ``server_policy`` (``None``: ModiPick), and every argument of
        :class:`OffloadSim` (``sla_ms``, ``sla_range_ms``, ``images``, ``radio``,
        ``energy_cost_per_j``, ``bandwidth_cost_per_mb``, ``miss_penalty``, ``backup_model``,
        ``cache_models``, ...).

        ## Version History
        * v0: initial version (device schema ``modi.device_decision`` v1; server schema
          ``modi.model_selection`` v1; no server queue). Device schema v2 appended
          ``net_uplink_last_mbps`` to the request block (observations one column longer).
          Issue 14: the network columns hold only measurements completed by the capture
          (before, the previous request's download and probe entered at the next capture
          whether or not it had completed, and after local requests too); ``probe_every_ms``
          and ``info["probe"]`` added.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - gymnasium API

    def __init__(
        self,
        device: str | DeviceProfile = "mid",
        network: str | NetworkModel = "wifi_university",
        pool: str | ModelPool = "modipick_table2",
        **kwargs: Any,
    ) -> None:
        self.sim = build_offload_sim(device, network, pool, num_envs=1, **kwargs)
        self.device = self.sim.device
        self.pool = self.sim.pool
        self.observation_space, self.action_space = _spaces(self.sim)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.float32], dict[str, Any]]:
        """Start a new stream of captures; the same seed replays the same requests."""
        super().reset(seed=seed)
        sim_seed = int(self.np_random.integers(2**63)) if seed is None else seed
        obs = self.sim.reset(sim_seed)
        return obs[0].copy(), {}

    def step(
        self, action: NDArray[np.int64] | Sequence[int]
    ) -> tuple[NDArray[np.float32], float, bool, bool, dict[str, Any]]:
        """Handle the current capture with ``action`` = (preprocessing, placement, backup)."""
        a = np.asarray(action)
        if a.shape != (3,):
            raise OffloadError(
                f"action must be 3 integers (preprocessing, placement, backup), got {action!r}"
            )
        try:
            a = np.array([operator.index(x) for x in a.tolist()], dtype=np.int64)
        except TypeError:
            raise OffloadError(f"action must be integers, got {action!r}") from None
        o = self.sim.step(a[None, :])
        info = o.info(0)
        return self.sim.obs[0].copy(), float(o.reward[0]), False, False, info


OffloadEnv.__doc__ = (OffloadEnv.__doc__ or "").format(
    device_request_table=_table(dfeat.DEVICE_REQUEST_FEATURES),
    device_model_table=_table(dfeat.DEVICE_MODEL_FEATURES),
    server_request_table=_table(SERVER_REQUEST_FEATURES),
    server_model_table=_table(SERVER_MODEL_FEATURES),
)


class OffloadVectorEnv(StreamVectorEnv):
    """``num_envs`` devices of :class:`OffloadEnv`, batched natively in numpy.

    Reached with ``gymnasium.make_vec("modi/Offload-v0", num_envs=N)``. Actions ``(N, 3)``.
    Same-step autoreset every ``max_episode_steps`` requests (server profiles and device memory
    are reset; ``infos["final_obs"]`` holds the last observations). Infos hold arrays of the
    breakdown of :class:`OffloadEnv`.
    """

    def __init__(
        self,
        num_envs: int = 1,
        device: str | DeviceProfile = "mid",
        network: str | NetworkModel = "wifi_university",
        pool: str | ModelPool = "modipick_table2",
        max_episode_steps: int = DEFAULT_EPISODE_REQUESTS,
        **kwargs: Any,
    ) -> None:
        self.sim = build_offload_sim(device, network, pool, num_envs=num_envs, **kwargs)
        self.device = self.sim.device
        self.pool = self.sim.pool
        self.single_observation_space, self.single_action_space = _spaces(self.sim)
        self.observation_space = spaces.Box(
            -np.inf, np.inf, shape=(num_envs, self.sim.obs_dim), dtype=np.float32
        )
        self.action_space = spaces.MultiDiscrete(np.tile(self.sim.action_nvec, (num_envs, 1)))
        self._init_streams(num_envs, max_episode_steps)

    def step(
        self, actions: NDArray[np.int64]
    ) -> tuple[
        NDArray[np.float32],
        NDArray[np.float64],
        NDArray[np.bool_],
        NDArray[np.bool_],
        dict[str, Any],
    ]:
        """Handle the current capture of every device."""
        o = self.sim.step(actions)
        infos = o.infos()
        return self._finish_step(o.reward, infos)
