"""``python -m tvixd`` is the same as the ``tvixd`` console script."""

from tvixd.cli import main

if __name__ == "__main__":
    main()
