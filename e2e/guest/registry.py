#!/usr/bin/env python3
"""Reads a multi-platform image back from a registry (HTTP on loopback): the platforms of its index and,
for each, the file a build step wrote into the image's last layer. Prints one line per platform:
    os/arch[/variant] <TAB> the file's content (one line)
Usage: registry.py http://127.0.0.1:5000 REPOSITORY TAG FILE"""

import gzip
import io
import json
import sys
import tarfile
import urllib.request

INDEX = ("application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


def get(url: str, accept: str = "*/*") -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept}), timeout=120) as r:
        return r.read()


def main(base: str, repo: str, tag: str, wanted: str) -> int:
    index = json.loads(get(f"{base}/v2/{repo}/manifests/{tag}", INDEX))
    if "manifests" not in index:
        sys.stderr.write(f"{repo}:{tag} is not a manifest list: {index.get('mediaType')}\n")
        return 1
    for entry in index["manifests"]:
        p = entry.get("platform") or {}
        platform = "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)
        manifest = json.loads(get(f"{base}/v2/{repo}/manifests/{entry['digest']}", MANIFEST))
        blob = get(f"{base}/v2/{repo}/blobs/{manifest['layers'][-1]['digest']}")
        data = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
        with tarfile.open(fileobj=io.BytesIO(data)) as layer:
            member = next((m for m in layer.getmembers() if m.name.lstrip("./") == wanted.lstrip("/")), None)
            content = layer.extractfile(member).read().decode(errors="replace").strip() if member else "<no file>"
        print(f"{platform}\t{content}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
