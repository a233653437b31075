"""projects and api keys

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from datetime import UTC, datetime

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('projects',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_projects'))
    )
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('project_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], name=op.f('fk_api_keys_project_id_projects'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash'))
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_keys_project_id'), ['project_id'], unique=False)

    # Rows from before projects existed move to a "default" project, created only if needed.
    for table in ("datasets", "jobs"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('project_id', sa.String(length=40), nullable=True))
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('idempotency_key', sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column('request_hash', sa.String(length=64), nullable=True))
    conn = op.get_bind()
    if conn.execute(sa.text("SELECT 1 FROM datasets UNION SELECT 1 FROM jobs LIMIT 1")).first():
        conn.execute(sa.text("INSERT INTO projects (id, name, created_at) VALUES ('proj_default', 'default', :now)"),
                     {"now": datetime.now(UTC)})
        for table in ("datasets", "jobs"):
            conn.execute(sa.text(f"UPDATE {table} SET project_id = 'proj_default'"))

    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.alter_column('project_id', existing_type=sa.String(length=40), nullable=False)
        batch_op.create_index(batch_op.f('ix_datasets_project_id'), ['project_id'], unique=False)
        batch_op.create_unique_constraint(batch_op.f('uq_datasets_project_id_idempotency_key'), ['project_id', 'idempotency_key'])
        batch_op.create_foreign_key(batch_op.f('fk_datasets_project_id_projects'), 'projects', ['project_id'], ['id'], ondelete='CASCADE')

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.alter_column('project_id', existing_type=sa.String(length=40), nullable=False)
        batch_op.drop_constraint(batch_op.f('uq_jobs_idempotency_key'), type_='unique')
        batch_op.create_index(batch_op.f('ix_jobs_project_id'), ['project_id'], unique=False)
        batch_op.create_unique_constraint(batch_op.f('uq_jobs_project_id_idempotency_key'), ['project_id', 'idempotency_key'])
        batch_op.create_foreign_key(batch_op.f('fk_jobs_project_id_projects'), 'projects', ['project_id'], ['id'], ondelete='CASCADE')


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_jobs_project_id_projects'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('uq_jobs_project_id_idempotency_key'), type_='unique')
        batch_op.drop_index(batch_op.f('ix_jobs_project_id'))
        batch_op.create_unique_constraint(batch_op.f('uq_jobs_idempotency_key'), ['idempotency_key'])
        batch_op.drop_column('project_id')

    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_datasets_project_id_projects'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('uq_datasets_project_id_idempotency_key'), type_='unique')
        batch_op.drop_index(batch_op.f('ix_datasets_project_id'))
        batch_op.drop_column('request_hash')
        batch_op.drop_column('idempotency_key')
        batch_op.drop_column('project_id')

    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_project_id'))

    op.drop_table('api_keys')
    op.drop_table('projects')
