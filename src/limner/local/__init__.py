"""The local engine: self-hosted generation on diffusers (``-m local:<model>``).

``models`` resolves names to safetensors weights (no torch import), ``options`` checks a
request's engine options, ``pipelines`` loads and keeps pipelines resident, ``ops`` runs the
operations, ``engine`` runs jobs in a worker thread with per-step progress and cancellation,
``comfyui`` converts a generation to a ComfyUI API-format workflow.
"""
