"""a job's pace and ETA, rollout samples, checkpoint download links

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('steps_per_second', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('tokens_per_second', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('estimated_finish', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'job_samples',
        sa.Column('id', BIG_ID, autoincrement=True, nullable=False),
        sa.Column('job_id', sa.String(length=40), nullable=False),
        sa.Column('step', sa.Integer(), nullable=False),
        sa.Column('rows', JSON, nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_samples_job_id_jobs'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_job_samples')),
        sa.UniqueConstraint('job_id', 'step', name=op.f('uq_job_samples_job_id_step')),
    )
    op.create_index('ix_job_samples_job_id_id', 'job_samples', ['job_id', 'id'], unique=False)
    op.create_table(
        'download_tokens',
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('project_id', sa.String(length=40), nullable=False),
        sa.Column('checkpoint_id', sa.String(length=40), nullable=False),
        sa.Column('merged', sa.Boolean(), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['checkpoint_id'], ['checkpoints.id'],
                                name=op.f('fk_download_tokens_checkpoint_id_checkpoints'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['project_id'], ['projects.id'],
                                name=op.f('fk_download_tokens_project_id_projects'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_download_tokens')),
    )
    op.create_index(op.f('ix_download_tokens_checkpoint_id'), 'download_tokens', ['checkpoint_id'], unique=False)
    op.create_index(op.f('ix_download_tokens_expires_at'), 'download_tokens', ['expires_at'], unique=False)
    op.create_index(op.f('ix_download_tokens_project_id'), 'download_tokens', ['project_id'], unique=False)


def downgrade() -> None:
    op.drop_table('download_tokens')
    op.drop_table('job_samples')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('estimated_finish')
        batch_op.drop_column('tokens_per_second')
        batch_op.drop_column('steps_per_second')
