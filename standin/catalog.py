"""The stand-in storefront's goods: a few products of the accelerator's electronics sample store, and carts."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

MAX_CARTS = 1000


@dataclass(frozen=True, slots=True)
class Category:
    code: str
    name: str


@dataclass(frozen=True, slots=True)
class Product:
    sku: str
    name: str
    price: float
    category: Category

    def as_json(self) -> dict[str, Any]:
        """The product as pages and the OCC API show it."""
        return {
            "sku": self.sku,
            "name": self.name,
            "price": self.price,
            "category": {"code": self.category.code, "name": self.category.name},
        }


COMPACTS = Category("576", "Digital Compacts")
SLR = Category("578", "Digital SLR")
CAMCORDERS = Category("584", "Camcorders")
CATEGORIES = (COMPACTS, SLR, CAMCORDERS)
PRODUCTS = (
    Product("300938", "Photosmart E317 Digital Camera", 114.12, COMPACTS),
    Product("1934793", "PowerShot A480", 99.85, COMPACTS),
    Product("816802", "Cyber-shot W55", 86.41, COMPACTS),
    Product("1382080", "EOS 450D + 18-55 IS Kit", 574.88, SLR),
    Product("2053367", "HDR-CX105E Camcorder", 411.93, CAMCORDERS),
)
# What the merchandising strategy recommends, in its order (not the home page's featured products).
RECOMMENDED = (PRODUCTS[4], PRODUCTS[3], PRODUCTS[1])


def category(code: str) -> Category | None:
    """The category with that code."""
    return next((c for c in CATEGORIES if c.code == code), None)


def product(sku: str) -> Product | None:
    """The product with that SKU."""
    return next((p for p in PRODUCTS if p.sku == sku), None)


def in_category(code: str) -> list[Product]:
    """Products of one category."""
    return [p for p in PRODUCTS if p.category.code == code]


def search(text: str) -> list[Product]:
    """Products whose name or category contains every word of `text` (case-insensitive)."""
    words = text.lower().split()
    return [p for p in PRODUCTS if all(w in f"{p.name} {p.category.name}".lower() for w in words)]


class Carts:
    """Anonymous carts by id, in memory (the oldest are forgotten beyond MAX_CARTS)."""

    def __init__(self) -> None:
        self._carts: OrderedDict[str, dict[str, int]] = OrderedDict()
        self._codes: dict[str, str] = {}
        self._lock = threading.Lock()

    def add(self, cart_id: str | None, item: Product, quantity: int) -> tuple[str, dict[str, Any]]:
        """Add to a cart (a new one when `cart_id` is unknown); return its id and the cart."""
        with self._lock:
            if not cart_id or cart_id not in self._carts:
                cart_id = cart_id or uuid.uuid4().hex
                self._carts[cart_id] = {}
                self._codes[cart_id] = f"{len(self._codes) + 10000:08d}"
                while len(self._carts) > MAX_CARTS:
                    old, _ = self._carts.popitem(last=False)
                    self._codes.pop(old, None)
            entries = self._carts[cart_id]
            entries[item.sku] = entries.get(item.sku, 0) + quantity
            return cart_id, self._view(cart_id)

    def get(self, cart_id: str | None) -> dict[str, Any]:
        """The cart as pages and the OCC API show it (empty when unknown)."""
        with self._lock:
            if not cart_id or cart_id not in self._carts:
                return {"code": "", "guid": "", "entries": [], "totalItems": 0, "totalPrice": 0.0}
            return self._view(cart_id)

    def _view(self, cart_id: str) -> dict[str, Any]:
        lines = [(item, qty) for sku, qty in self._carts[cart_id].items() if (item := product(sku)) is not None]
        return {
            "code": self._codes[cart_id],
            "guid": cart_id,
            "entries": [{"sku": i.sku, "name": i.name, "quantity": q, "price": i.price} for i, q in lines],
            "totalItems": sum(q for _, q in lines),
            "totalPrice": round(sum(q * i.price for i, q in lines), 2),
        }
