#!/usr/bin/env bash
# A real Spark standalone cluster on this machine, from the installed pyspark: one master and N
# workers, each its own JVM, bound to 127.0.0.1 on free ports. For testing spark-submit the way it
# runs on a cluster (executors in other JVMs, Python shipped with --archives).
#
#   scripts/local_cluster.sh start [--dir DIR] [--workers 2] [--cores 1] [--memory 1g]
#       starts the daemons, waits until every worker has registered, prints the master URL
#       (also in DIR/master_url) and exits; logs in DIR/*.log, worker scratch in DIR/work-*
#   scripts/local_cluster.sh stop [--dir DIR]
#       stops exactly the daemons started there (by their recorded process ids)
#
# DIR defaults to $SPARK_CLEORA_CLUSTER_DIR or /tmp/spark_cleora_cluster. The Python that finds
# pyspark is $PYTHON (default python3).
set -euo pipefail

CMD="${1:-}"
[[ -n "$CMD" ]] && shift || true
DIR="${SPARK_CLEORA_CLUSTER_DIR:-/tmp/spark_cleora_cluster}"
WORKERS=2
CORES=1
MEMORY=1g
PY="${PYTHON:-python3}"
TIMEOUT="${SPARK_CLEORA_CLUSTER_TIMEOUT:-180}"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --cores) CORES="$2"; shift 2 ;;
    --memory) MEMORY="$2"; shift 2 ;;
    *) echo "local_cluster.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

say() { echo "local_cluster.sh: $*" >&2; }

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

stop_pid() {  # TERM, wait up to 15 s, then KILL; only the process id given
  local pid="$1"
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.5
  done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {
  local f
  shopt -s nullglob
  for f in "$DIR"/*.pid; do
    stop_pid "$(cat "$f")"
    rm -f "$f"
  done
  say "stopped the daemons in $DIR"
}

start() {
  if compgen -G "$DIR/*.pid" >/dev/null; then
    say "$DIR already has running daemons; run '$0 stop --dir $DIR' first"
    exit 2
  fi
  local spark_home
  spark_home="$("$PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')" \
    || { say "$PY cannot import pyspark (set PYTHON)"; exit 4; }
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
  local port ui
  port="$(free_port)"
  ui="$(free_port)"
  # Everything on the loopback interface; small daemons (the executors get their own memory).
  export SPARK_HOME="$spark_home" SPARK_LOCAL_IP=127.0.0.1 SPARK_MASTER_HOST=127.0.0.1
  export SPARK_DAEMON_MEMORY="${SPARK_DAEMON_MEMORY:-256m}" SPARK_LOG_DIR="$DIR"
  # The workers must not lend the executors this machine's Python setup: jobs bring their own.
  unset PYSPARK_PYTHON PYSPARK_DRIVER_PYTHON PYTHONPATH SPARK_REMOTE
  local class="$SPARK_HOME/bin/spark-class"
  nohup "$class" org.apache.spark.deploy.master.Master --host 127.0.0.1 --port "$port" --webui-port "$ui" \
    >"$DIR/master.log" 2>&1 </dev/null &
  echo $! >"$DIR/master.pid"
  local url="spark://127.0.0.1:$port"
  local i
  for i in $(seq 1 "$WORKERS"); do
    mkdir -p "$DIR/work-$i"
    nohup "$class" org.apache.spark.deploy.worker.Worker --host 127.0.0.1 \
      --webui-port "$(free_port)" --cores "$CORES" --memory "$MEMORY" --work-dir "$DIR/work-$i" "$url" \
      >"$DIR/worker-$i.log" 2>&1 </dev/null &
    echo $! >"$DIR/worker-$i.pid"
  done
  local waited=0 registered=0
  while (( waited < TIMEOUT * 2 )); do
    registered="$(cat "$DIR"/worker-*.log 2>/dev/null | grep -c "Successfully registered with master" || true)"
    (( registered >= WORKERS )) && break
    for f in "$DIR"/*.pid; do
      if ! kill -0 "$(cat "$f")" 2>/dev/null; then
        say "$(basename "$f" .pid) exited; its log:"; tail -n 30 "${f%.pid}.log" >&2; stop; exit 1
      fi
    done
    sleep 0.5
    waited=$((waited + 1))
  done
  if (( registered < WORKERS )); then
    say "only $registered of $WORKERS workers registered within ${TIMEOUT}s; see $DIR/*.log"
    stop
    exit 1
  fi
  echo "$url" >"$DIR/master_url"
  say "master $url (web UI http://127.0.0.1:$ui), $WORKERS workers x $CORES core(s), $MEMORY; logs in $DIR"
  echo "$url"
}

case "$CMD" in
  start) start ;;
  stop) stop ;;
  *) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; [[ "$CMD" =~ ^(-h|--help)$ ]] && exit 0; exit 2 ;;
esac
