"""QLoRA sizing (not collected by pytest): `jaxift.tools.memory_estimate` on the Llama-3.1-8B
shape, LoRA r=16 on every projection, one 2048-token row per device (the batch axis is sharded over
data x fsdp, so 8 devices take 8 rows), for a bf16 / int8 / nf4 frozen base, with and without remat
+ chunked loss, on 1 device and on 8 fake devices (fsdp=8). Prints a markdown table (GiB per
device: frozen base, adapters + Adam moments, temporaries, peak); JSON reports in OUT_DIR.

  flock /tmp/bench.lock python tests/lora/bench_qlora_memory.py /tmp/qlora_memory [1 8]
"""
import json
import pathlib
import subprocess
import sys

GIB = 1024 ** 3


def main(out_dir: str, device_counts: tuple[int, ...]) -> None:
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  rows = []
  for devices in device_counts:
    for lean in (True, False):
      for quant in ("none", "int8", "nf4"):
        name = f"{quant}_{devices}dev_{'remat' if lean else 'plain'}"
        extra = [] if lean else ["--config.model.remat_policy=none",
                                 "--config.train.loss_chunk_size=0"]
        cmd = [sys.executable, "-m", "jaxift.tools.memory_estimate",
               f"--config=configs/llama3_8b_qlora_tpu.py:batch={devices},seq=2048,quant={quant}",
               "--shape=llama-3.1-8b", f"--devices={devices}", f"--out={out / name}.json", *extra]
        subprocess.run(cmd, check=True, capture_output=True)
        r = json.loads((out / f"{name}.json").read_text())
        rows.append((quant, devices, "full + chunk 1024" if lean else "none, no chunk",
                     r["frozen_bytes_per_device"] / GIB,
                     (r["params_bytes_per_device"] + r["opt_state_bytes_per_device"]) / GIB,
                     r["temp_bytes"] / GIB, r["peak_bytes_per_device"] / GIB))
        print(name, f"{rows[-1][-1]:.2f}", file=sys.stderr, flush=True)
  print("| base | devices | remat + loss | frozen base | adapters + Adam | temporaries | peak |")
  print("|---|---|---|---|---|---|---|")
  for quant, devices, lean, frozen, train, temp, peak in rows:
    base = "bf16" if quant == "none" else quant
    print(f"| {base} | {devices} | {lean} | {frozen:.2f} | {train:.2f} | {temp:.2f} | {peak:.2f} |")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/qlora_memory",
       tuple(int(n) for n in sys.argv[2:]) or (1, 8))
