"""The collector: scraping, the sliding window's maths, targets and the service."""
