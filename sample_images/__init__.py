"""Synthetic AP knee radiograph phantoms with a known bone-mineral density.

Real radiographs cannot be shipped, so the project ships these phantoms and the generator that
makes them (:mod:`sample_images.generate`). Each image carries a continuous ``density`` drawn from
overlapping class distributions, so the generator also knows the Bayes-optimal accuracy a
classifier can reach.
"""
