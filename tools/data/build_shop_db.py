"""Build the small shop database used by the ``sql_query`` tool.

Run it from anywhere::

    python tools/data/build_shop_db.py

It deletes ``shop.sqlite`` next to this script (if present) and recreates it with three
tables filled with fixed data:

- ``products(id, name, category, price, stock)``: 20 rows
- ``customers(id, name, city, joined)``: 12 rows, ``joined`` as YYYY-MM-DD
- ``orders(id, customer_id, product_id, quantity, ordered)``: 40 rows, ``ordered`` as YYYY-MM-DD

The data is fixed and no timestamps are stored, so every run with the same SQLite version
produces a byte-identical file (written in ``journal_mode=DELETE``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

DB_PATH = Path(__file__).resolve().parent / "shop.sqlite"

SCHEMA = """
CREATE TABLE products (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    price REAL NOT NULL,
    stock INTEGER NOT NULL
);
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    city TEXT NOT NULL,
    joined TEXT NOT NULL  -- YYYY-MM-DD
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    product_id INTEGER NOT NULL REFERENCES products(id),
    quantity INTEGER NOT NULL,
    ordered TEXT NOT NULL  -- YYYY-MM-DD
);
"""

PRODUCTS = [
    (1, "The Silent Harbor", "books", 14.99, 42),
    (2, "Cooking with Grains", "books", 24.50, 18),
    (3, "A Field Guide to Birds", "books", 19.95, 25),
    (4, "Learn SQL in a Weekend", "books", 29.00, 12),
    (5, "Chef's Knife 20 cm", "kitchen", 49.90, 15),
    (6, "Cast Iron Skillet", "kitchen", 39.00, 22),
    (7, "Bamboo Cutting Board", "kitchen", 18.75, 40),
    (8, "Ceramic Teapot", "kitchen", 27.50, 9),
    (9, "Pruning Shears", "garden", 21.99, 30),
    (10, "Watering Can 10 L", "garden", 16.40, 27),
    (11, "Tomato Seed Pack", "garden", 3.25, 150),
    (12, "Raised Garden Bed", "garden", 89.00, 6),
    (13, "Wooden Building Blocks", "toys", 34.99, 20),
    (14, "Jigsaw Puzzle 1000 Pieces", "toys", 15.50, 33),
    (15, "Diamond Kite", "toys", 12.00, 0),
    (16, "Plush Elephant", "toys", 22.00, 14),
    (17, "Wireless Mouse", "electronics", 25.99, 45),
    (18, "USB-C Charger 65 W", "electronics", 32.50, 38),
    (19, "Bluetooth Speaker", "electronics", 59.00, 11),
    (20, "Noise-Cancelling Headphones", "electronics", 149.00, 7),
]

CUSTOMERS = [
    (1, "Alice Moreau", "Lyon", "2022-03-14"),
    (2, "Ben Okafor", "Lagos", "2022-07-02"),
    (3, "Chloe Tanaka", "Osaka", "2022-11-20"),
    (4, "Daniel Weber", "Berlin", "2023-01-09"),
    (5, "Elena Rossi", "Milan", "2023-02-28"),
    (6, "Farid Haddad", "Lyon", "2023-05-17"),
    (7, "Grace Lee", "Toronto", "2023-08-03"),
    (8, "Hugo Santos", "Lisbon", "2023-10-12"),
    (9, "Ingrid Larsen", "Oslo", "2024-01-05"),
    (10, "Jamal Carter", "Toronto", "2024-02-29"),
    (11, "Keiko Mori", "Osaka", "2024-04-18"),
    (12, "Liam Byrne", "Dublin", "2024-06-30"),
]

# (id, customer_id, product_id, quantity, ordered)
ORDERS = [
    (1, 2, 4, 2, "2024-01-29"),
    (2, 4, 12, 2, "2024-02-11"),
    (3, 4, 19, 1, "2024-02-20"),
    (4, 1, 6, 1, "2024-02-23"),
    (5, 8, 19, 1, "2024-03-23"),
    (6, 4, 7, 5, "2024-04-05"),
    (7, 2, 16, 2, "2024-04-10"),
    (8, 8, 6, 2, "2024-04-12"),
    (9, 9, 14, 4, "2024-04-12"),
    (10, 8, 12, 1, "2024-04-13"),
    (11, 4, 14, 2, "2024-04-14"),
    (12, 6, 17, 1, "2024-04-15"),
    (13, 2, 11, 2, "2024-04-30"),
    (14, 10, 3, 1, "2024-04-30"),
    (15, 1, 8, 1, "2024-05-12"),
    (16, 6, 16, 1, "2024-05-14"),
    (17, 2, 10, 2, "2024-05-22"),
    (18, 6, 1, 1, "2024-05-23"),
    (19, 7, 6, 2, "2024-06-12"),
    (20, 6, 12, 2, "2024-06-15"),
    (21, 8, 6, 1, "2024-06-18"),
    (22, 7, 20, 3, "2024-06-20"),
    (23, 2, 5, 3, "2024-07-18"),
    (24, 8, 5, 2, "2024-07-29"),
    (25, 3, 1, 1, "2024-08-12"),
    (26, 1, 12, 4, "2024-08-26"),
    (27, 8, 20, 2, "2024-09-03"),
    (28, 8, 12, 4, "2024-09-26"),
    (29, 3, 19, 2, "2024-09-26"),
    (30, 10, 7, 2, "2024-10-05"),
    (31, 2, 18, 1, "2024-10-05"),
    (32, 7, 14, 3, "2024-10-17"),
    (33, 11, 20, 2, "2024-10-23"),
    (34, 2, 5, 1, "2024-10-31"),
    (35, 9, 20, 1, "2024-10-31"),
    (36, 9, 11, 4, "2024-11-10"),
    (37, 6, 2, 4, "2024-11-20"),
    (38, 7, 9, 2, "2024-11-21"),
    (39, 9, 5, 2, "2024-11-21"),
    (40, 4, 10, 2, "2024-12-21"),
]


def build(path: Path = DB_PATH) -> Path:
    """Delete `path` if it exists and write the shop database there."""
    for leftover in (path, path.with_name(path.name + "-journal")):
        leftover.unlink(missing_ok=True)
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=DELETE")
        with db:
            db.executescript(SCHEMA)
            db.executemany("INSERT INTO products VALUES (?, ?, ?, ?, ?)", PRODUCTS)
            db.executemany("INSERT INTO customers VALUES (?, ?, ?, ?)", CUSTOMERS)
            db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", ORDERS)
    finally:
        db.close()
    return path


if __name__ == "__main__":
    print(f"wrote {build()}")
