from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import UTCDateTime, new_id, utcnow
from shared.repository import TenantRow


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    plan: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Requests per calendar month an operator gave this tenant (`set-quota`); None: its plan's.
    monthly_quota: Mapped[int | None] = mapped_column(BigInteger, default=None)


class User(Base, TenantRow):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint("credit_limit_cents >= 0", name="ck_users_credit_limit_not_negative"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    # Stored in canonical form (services/users/emails.py); the unique index makes emails unique
    # across the whole system.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Wrong passwords since the last good one, and until when the next attempt waits (services/users/security.py).
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    login_blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # What the user's open orders may add up to; None: the default of the tenant's plan (settings).
    credit_limit_cents: Mapped[int | None] = mapped_column(BigInteger, default=None)


class ApiKey(Base, TenantRow):
    """An API key. Only the SHA-256 of the key is stored; the raw key is shown once, at creation."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    created_by: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The last characters of the key, so a listing can tell keys apart without showing them.
    hint: Mapped[str] = mapped_column(String(8))
    # Space-separated, as in an OAuth `scope` claim.
    scopes: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Set when the key is rotated: it keeps working until then (the grace period).
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    replaced_by: Mapped[str | None] = mapped_column(String(36), default=None)

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(self.scopes.split())


class SigningKey(Base):
    """An RS256 key access tokens are signed with (`services/users/signing.py`). Generations are
    unique, so two instances rotating at once make one new key."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, unique=True)
    # PEM (PKCS#8). The database holds it as it holds the password hashes: keep it encrypted at rest.
    private_pem: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
