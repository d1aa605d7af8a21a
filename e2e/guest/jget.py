"""Print one value of the JSON document on stdin, for the probe scripts.

  jget.py dockerd.pid                 a dotted path into objects
  jget.py --check aarch32-el0 verdict a field of the `armhf-agent doctor --json` check of that name

Booleans print as true/false, null as nothing; a missing key exits 1 naming it.
"""

import json
import sys


def main() -> int:
    document = json.load(sys.stdin)
    args = sys.argv[1:]
    if args[0] == "--check":
        matches = [c for c in document if c.get("name") == args[1]]
        if not matches:
            print(f"jget: no doctor check named {args[1]!r}", file=sys.stderr)
            return 1
        value = matches[0].get(args[2])
    else:
        value = document
        for key in args[0].split("."):
            if not isinstance(value, dict) or key not in value:
                print(f"jget: no {key!r} in {args[0]!r}", file=sys.stderr)
                return 1
            value = value[key]
    print("" if value is None else json.dumps(value) if isinstance(value, bool) else value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
