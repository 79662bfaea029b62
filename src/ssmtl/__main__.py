"""`python -m ssmtl` and `accelerate launch -m ssmtl` run the same CLI."""

from ssmtl.cli.app import main

if __name__ == "__main__":
    main()
