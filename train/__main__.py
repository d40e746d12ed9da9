"""Training a cascade stage on an ImageFolder dataset, writing a jetson-inference model folder."""

from train.train import main

if __name__ == "__main__":
    raise SystemExit(main())
