"""Training a cascade stage on an ImageFolder dataset, writing a jetson-inference model folder."""
