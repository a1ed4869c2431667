"""A stand-in storefront and ISS tenant: clickwatch's `demo`, and the backbone of its end-to-end tests."""
