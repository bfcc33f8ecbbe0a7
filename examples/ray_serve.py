"""Serve Stable Audio 3 with Ray Serve: the same HTTP API as `stable-audio serve`, one replica per GPU.

    pip install 'stable-audio-3[server,ray]'
    python examples/ray_serve.py --model small-music --replicas 2          # two GPUs, fixed
    python examples/ray_serve.py --model small-music --max-replicas 8      # autoscale 1..8 GPUs
    python examples/ray_serve.py --model /path/to/model --cpu --replicas 2 --smoke  # try it on CPU
    python examples/ray_serve.py --cpu --replicas 1 --lora octave-up --smoke        # the demo and its LoRA

All replicas share --data-dir (job queue in SQLite + audio files): any replica accepts a job, the
next idle one runs it, and any one answers for it. Across several nodes --data-dir must be on a
shared file system. With --smoke the script submits one job, waits for it, and shuts down; without
it the server runs until Ctrl-C. Clients use the HTTP API described in README.md ("HTTP API").
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import urllib.request


def http(method: str, url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="Hub name or local model folder")
    p.add_argument("--data-dir", default=None, help="shared job folder (default: a temporary one)")
    p.add_argument("--replicas", type=int, default=None, help="fixed number of replicas (default: autoscale)")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=4)
    p.add_argument("--cpu", action="store_true", help="CPU replicas (no GPU needed)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--lora", action="append", default=[], metavar="[NAME=]PATH_OR_SHIPPED",
                   help="a LoRA requests may use by name: a file, or one shipped with the model (demo: octave-up)")
    p.add_argument("--smoke", action="store_true", help="submit one job, wait for it, then stop")
    args = p.parse_args()

    import ray
    from ray import serve

    from stable_audio_3.server.ray import build_app
    from stable_audio_3.server.settings import lora_specs

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="sa3-ray-")
    ray.init(num_cpus=max(2, (args.replicas or args.max_replicas) + 1) if args.cpu else None)
    serve.start(http_options={"host": args.host, "port": args.port})
    app = build_app(
        models=[args.model],
        data_dir=data_dir,
        num_replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        num_gpus=0 if args.cpu else 1,
        num_cpus=0.5 if args.cpu else 1,
        loras=lora_specs(args.lora),
    )
    serve.run(app, name="stable-audio-3", route_prefix="/")
    base = f"http://{args.host}:{args.port}"
    print(f"serving on {base} (jobs in {data_dir}); models: {http('GET', base + '/v1/models')}")
    if not args.smoke:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        serve.shutdown()
        return
    body = {"prompt": "warm analog synth pad", "duration": 2.0, "seed": 1}
    if args.lora:
        body["loras"] = [{"name": name} for name in lora_specs(args.lora)]
    job = http("POST", base + "/v1/generate", body)
    while (info := http("GET", f"{base}/v1/jobs/{job['id']}"))["status"] not in ("completed", "failed", "cancelled"):
        time.sleep(0.2)
    print(f"job {info['id']}: {info['status']}, seeds {info['seeds']}, audio at {base}{info['audio_urls'][0]}")
    serve.shutdown()
    ray.shutdown()
    if not args.data_dir:
        shutil.rmtree(data_dir, ignore_errors=True)  # the temporary job folder of this smoke run


if __name__ == "__main__":
    main()
