# Payload updates across Docker versions, sourced by agent.sh when the data disk carries a second
# payload (/e2e/update/docker-VERSION.tgz; e2e_arm64.py RELEASES says which row has one). With the
# agent running on the row's payload (with --live-restore, agent.live-restore) and a container running,
# `armhf-agent install-docker` of the other version, then back: dockerd must restart onto it, stay
# linux/arm/v7, `status` must report the new version, and the container keeps running where the
# versions allow it. Uses agent-lib.sh's functions (sourced before this file).

FIRST=$(ls "$E2E"/docker-*.tgz)
SECOND=$(ls "$E2E"/update/docker-*.tgz)
# docker-26.1.5.tgz -> 26.1.5
version_of() { basename "$1" .tgz | sed 's/^docker-//'; }
# Debian's builds say 26.1.5+dfsg1 where Docker's say 26.1.5: compared without the suffix.
upstream() { sed 's/[+~].*//'; }

# update_payload TGZ EXPECTED: a container started on the running version, then TGZ installed.
# EXPECTED is what this pair of versions does to that container with --live-restore (measured here,
# e2e/README.md), one of
#   survived   docker reports it running since the same start, and its process still runs
#   stopped    docker reports it exited, and its process is gone: nothing left running unseen
#   orphan     docker reports it exited, but its process still runs
#   restarted  docker reports it running, started again
# dockerd's log lines about the container and its restore are kept in $WORK/evidence-VERSION for the
# console, whatever the verdict.
update_payload() {
    want=$(version_of "$1")
    start_sleeper || { detail="cannot start a container"; return 1; }
    container_id=$($DOCKER inspect -f '{{.Id}}' e2e-sleeper)
    container_pid=$($DOCKER inspect -f '{{.State.Pid}}' e2e-sleeper)
    started=$($DOCKER inspect -f '{{.State.StartedAt}}' e2e-sleeper)
    from=$(status_json | jget dockerd.server_version | upstream)
    before=$(status_json | jget dockerd.pid)
    since=$(date +%s)
    # What the running version's containerd left for the next one to find: the task's state folder
    # (the shim's address, or bootstrap.json), and the shim process serving the container.
    {
        echo "before: $(find /var/run/docker/containerd -type d -name "$container_id" 2>/dev/null | while read -r d; do echo "$d: $(ls "$d" | tr '\n' ' ')"; done)"
        echo "before: shim $(pgrep -f "containerd-shim-runc-v2 .*-id $container_id" | tr '\n' ' ')"
    } > "$WORK/evidence-$want"
    shim_pids=$(pgrep -f "containerd-shim-runc-v2 .*-id $container_id")
    armhf-agent install-docker "$1" || { detail="install-docker $1 failed"; return 1; }
    within 300
    while :; do
        if armhf-agent status > /dev/null 2>&1; then
            status_json > "$WORK/status.json"
            [ "$(jget dockerd.pid < "$WORK/status.json")" != "$before" ] &&
                [ "$(jget dockerd.server_version < "$WORK/status.json" | upstream)" = "$want" ] && break
        fi
        expired && { detail="no healthy dockerd $want within 300 s of install-docker"; armhf-agent status;
                     journalctl -u armhf-agent -n 40 --no-pager; return 1; }
        sleep 2
    done
    cat "$WORK/status.json"
    # The daemon's own platform decision, not only the agent's reading of it: a FROM scratch image.
    build_image 0 "e2e-scratch-$want" scratch > "$WORK/build-$want.log" 2>&1 || { cat "$WORK/build-$want.log"; detail="build on $want failed"; return 1; }
    variant=$($DOCKER image inspect -f '{{.Variant}}' "e2e-scratch-$want")
    state=$($DOCKER inspect -f '{{.State.Status}} {{.State.StartedAt}}' e2e-sleeper)
    alive=no
    kill -0 "$container_pid" 2>/dev/null && alive=yes
    case "$state,$alive" in
        "running $started,yes") outcome=survived ;;
        running*) outcome=restarted ;;
        *,yes) outcome=orphan ;;
        *) outcome=stopped ;;
    esac
    {
        for pid in $shim_pids; do
            if kill -0 "$pid" 2>/dev/null; then echo "after: shim $pid still runs"; else echo "after: shim $pid is gone"; fi
        done
        journalctl -u armhf-agent -o cat --no-pager --since "@$since" |
            grep -iE "$(echo "$container_id" | cut -c1-12)|restor|live|shim|level=(error|fatal)" | head -n 20
    } >> "$WORK/evidence-$want"
    expect "from,server,payload,platform,scratch-variant,container" \
        "$from,$want,$want,linux/arm/v7,v7,$2" \
        "$from,$(jget dockerd.server_version < "$WORK/status.json" | upstream),$(jget payload.version < "$WORK/status.json" | upstream),$(jget platform.os < "$WORK/status.json")/$(jget platform.arch < "$WORK/status.json")/$(jget platform.variant < "$WORK/status.json"),$variant,$outcome"
    matched=$?
    detail="$detail; container $state, pid $container_pid alive=$alive"
    return $matched
}

# evidence VERSION: what dockerd said about the container across that update, on the console.
evidence() { [ -f "$WORK/evidence-$1" ] && sed "s/^/e2e| update to $1: /" "$WORK/evidence-$1"; }

info payload-first "$(version_of "$FIRST")"
info payload-second "$(version_of "$SECOND")"
# Docker 26.1.5 -> 28.5.2 (containerd 1.7.24 -> 2.1.9): containerd 2.1 takes over the running shim.
probe "update.to-$(version_of "$SECOND")" update_payload "$SECOND" survived
evidence "$(version_of "$SECOND")"
# And back: the container started on 28.5.2 (containerd 2.1.9) does not survive 26.1.5 (containerd 1.7.24):
# docker reports it exited and its process is gone (measured; why: e2e/README.md).
probe "update.back-to-$(version_of "$FIRST")" update_payload "$FIRST" stopped
evidence "$(version_of "$FIRST")"
