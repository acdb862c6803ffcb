-- One database per service: no service can read another's tables.
CREATE DATABASE users;
CREATE DATABASE orders;
CREATE DATABASE inventory;
CREATE DATABASE webhooks;
