"""job processes and strategy

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('processes', sa.Integer(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('strategy', sa.String(length=8), server_default='auto', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('strategy')
        batch_op.drop_column('processes')
