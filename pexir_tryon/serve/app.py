"""The application builder named by serve_config.yaml: `import_path: pexir_tryon.serve.app:build_app`.

`args:` in the YAML is an `AppArgs`. Which stages exist follows the settings: no refiner without a
model directory, the Alibaba deployment only when that backend can serve. GPUs are asked for only
when the cluster has them, so the same YAML runs on a laptop and on a GPU cluster.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, Field

from ..config import Settings

log = logging.getLogger(__name__)


class AppArgs(BaseModel):
    settings: dict = Field(default_factory=dict, description="Overrides of pexir_tryon.config.Settings (the environment fills the rest).")
    warper_gpus: float = Field(0.25, ge=0, description="GPUs per warp replica when the cluster has GPUs and device is not 'cpu'.")
    refiner_gpus: float = Field(1.0, ge=0, description="GPUs per refiner replica when the cluster has GPUs and device is not 'cpu'.")
    stage_cpus: float | None = Field(None, ge=0, description="CPUs per stage replica; unset keeps each deployment's default (1).")


def cluster_resource(name: str) -> float:
    import ray

    if not ray.is_initialized():
        return 0.0
    return float(ray.cluster_resources().get(name, 0))


def cluster_gpus() -> float:
    return cluster_resource("GPU")


def build_app(args: AppArgs | dict):
    from .deployments import AlibabaBackend, DiffusionRefiner, GarmentWarper, GeometryDetector
    from .ingress import TryOnIngress

    args = AppArgs.model_validate(args) if isinstance(args, dict) else args
    settings = Settings(**args.settings)  # validate once here: a bad setting fails the deploy, not a request
    # Replicas get only the YAML's overrides; each reads the environment (and its secrets) itself,
    # so no secret travels in deployment arguments, where `serve status` could show it.
    overrides = dict(args.settings)
    use_gpu = settings.device != "cpu" and cluster_gpus() > 0
    if not use_gpu:
        log.warning("no GPU in the cluster (or device=cpu): every stage runs on the CPU", extra={"event": "cpu_only"})

    needs_local = settings.backend == "local" or "local" in settings.request_backends
    needs_alibaba = settings.backend == "alibaba" or "alibaba" in settings.request_backends
    with_refiner = needs_local and settings.refiner.model_dir is not None
    cpu_share = _cpu_share(args, needs_local, with_refiner, needs_alibaba)

    def options(deployment, gpus: float):
        actor = dict(deployment.ray_actor_options or {})
        actor["num_cpus"] = args.stage_cpus if args.stage_cpus is not None else actor.get("num_cpus", 1) * cpu_share
        if use_gpu and gpus > 0:
            actor["num_gpus"] = gpus
        return deployment.options(ray_actor_options=actor)

    detector = warper = refiner = alibaba = None
    if needs_local:
        detector = options(GeometryDetector, 0).bind(overrides)
        warper = options(GarmentWarper, args.warper_gpus).bind(overrides)
        if settings.refiner.model_dir is not None:
            refiner = options(DiffusionRefiner, args.refiner_gpus).bind(overrides)
        else:
            log.warning("no refiner configured (refiner.model_dir unset): serving without stage 3", extra={"event": "refiner_disabled"})
    if needs_alibaba:
        alibaba = options(AlibabaBackend, 0).bind(overrides)
    serve_settings = settings.serve
    ingress = TryOnIngress.options(
        # The ingress sheds load itself (503 overloaded with our error body); Serve's own limits sit above ours.
        max_ongoing_requests=serve_settings.max_ongoing_requests + serve_settings.max_queued_requests + 32,
        ray_actor_options={"num_cpus": 0.5 * cpu_share if args.stage_cpus is None else args.stage_cpus},
    )
    return ingress.bind(overrides, detector, warper, refiner, alibaba)


def _cpu_share(args: AppArgs, local: bool, refiner: bool, alibaba: bool) -> float:
    """1.0, or less when one replica of each stage would not fit the cluster's CPUs (a laptop):
    then the stages share the CPUs instead of waiting forever to be placed."""
    if args.stage_cpus is not None:
        return 1.0
    wanted = 0.5 + (2.0 if local else 0.0) + (1.0 if refiner else 0.0) + (0.1 if alibaba else 0.0)
    available = cluster_resource("CPU")
    if available <= 0 or wanted <= available:
        return 1.0
    log.warning(
        "the cluster has fewer CPUs than one replica of each stage asks for: the stages share them",
        extra={"event": "cpu_shared", "cpus": available, "cpus_wanted": wanted},
    )
    return 0.9 * available / wanted
