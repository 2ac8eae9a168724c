#!/bin/sh
# Runs in a kernel-matrix guest (`cargo xtask guest 6.12 -- sh xtask/guest/multiqueue.sh`):
# TCP throughput, 4 streams, host -> namespace over a 4-queue veth, under
# three root qdiscs: mq + pfifo_fast (the kernel's multiqueue default), one
# HTB root with one class at 10gbit (what `htb` mode builds: every queue
# behind HTB's lock), and mq with an fq per queue (what `edt` mode builds).
# 3 alternating rounds of 5 s each; prints Mbit/s per round and the medians.
set -eu
ip netns add mqns
ip link add mqh numtxqueues 4 numrxqueues 4 type veth peer name mqp numtxqueues 4 numrxqueues 4 netns mqns
ip addr add 10.77.0.1/24 dev mqh && ip link set mqh up
ip -n mqns addr add 10.77.0.2/24 dev mqp && ip -n mqns link set mqp up && ip -n mqns link set lo up
ip netns exec mqns iperf3 -s -D -B 10.77.0.2 >/dev/null 2>&1
sleep 0.5
setup() {
  tc qdisc del dev mqh root 2>/dev/null || true
  case $1 in
    mq) tc qdisc add dev mqh root handle 5150: mq ;;
    htb) tc qdisc add dev mqh root handle 5150: htb default 1
         tc class add dev mqh parent 5150: classid 5150:1 htb rate 10gbit ceil 10gbit ;;
    mqfq) tc qdisc add dev mqh root handle 5150: mq
          for q in 1 2 3 4; do tc qdisc add dev mqh parent 5150:$q fq; done ;;
  esac
}
run() {
  iperf3 -c 10.77.0.2 -P 4 -t 5 -J | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))'
}
for kind in mq htb mqfq; do eval "r_$kind=''"; done
for round in 1 2 3; do
  for kind in mq htb mqfq; do
    setup $kind; v=$(run); eval "r_$kind=\"\$r_$kind $v\""
    echo "round $round $kind $v Mbit/s"
  done
done
for kind in mq htb mqfq; do
  eval "vals=\$r_$kind"
  echo "median $kind $(echo $vals | tr ' ' '\n' | sort -n | sed -n 2p) Mbit/s"
done
tc qdisc del dev mqh root 2>/dev/null || true
ip link del mqh; ip netns del mqns
