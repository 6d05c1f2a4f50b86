#!/bin/bash
# The elastic-ECHO result runs (resumable: echo-sim sweep skips finished points). From the repository root.
set -e
R=benchmarks/results/elastic
P="ar,static-chain,static,static-adaptive,static-adaptive:k=1,goodput,dynamic,echo,oracle,oracle:shape=full"
A="echo,echo:shape=off,echo:gate=select,echo:gate=off,echo:tau=1.0,echo:calibration=off,echo:decay=0.0,echo:budget=fixed,echo:bucketing=off,echo:prefill_term=off,echo:probe=0,echo:tie=0"
S="--seeds 0,1,2 --hardware h200 --jobs 2 --no-plots"
run_preset() {  # $1 = model preset
  echo-sim sweep --policies $P --concurrency 1,2,4,8,16 --workloads trace --requests 100 --model $1 $S --out $R/$1_trace_low
  echo-sim sweep --policies $P --concurrency 32,64,128,256 --workloads trace,sharegpt --requests 800 --model $1 $S --out $R/$1_high
  echo-sim sweep --policies $P --concurrency 1,2,4,8,16 --workloads sharegpt --requests 32 --model $1 $S --out $R/$1_sharegpt_low
}
run_preset llama-3.1-8b
echo-sim sweep --policies $A --concurrency 1,16 --workloads trace --requests 100 --model llama-3.1-8b $S --out $R/ablation_low
echo-sim sweep --policies $A --concurrency 64,256 --workloads trace --requests 800 --model llama-3.1-8b $S --out $R/ablation_high
run_preset qwen3-235b-a22b
