-- ListCustomers pages by customer id in byte order (the C collation, whatever
-- the database's), over every customer or over the customers of one plan; the
-- catalog reload asks which plans customers are on. Not unique: the customers
-- table stays keyed by customer_id first (Citus).
CREATE INDEX customers_listing_idx ON customers (customer_id COLLATE "C");
CREATE INDEX customers_plan_idx ON customers (plan_slug, customer_id COLLATE "C");
