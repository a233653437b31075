"""ppo ptx dataset

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ptx_dataset_id', sa.String(length=40), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_ptx_dataset_id'), ['ptx_dataset_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_ptx_dataset_id'))
        batch_op.drop_column('ptx_dataset_id')

