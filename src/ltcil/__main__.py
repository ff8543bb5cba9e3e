import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while Python imports the command line itself: one line, as anywhere else
    print("\ninterrupted.", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
