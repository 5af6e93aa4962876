import dagster as dg
import pyarrow as pa

from whisper_pipeline.resources.storage import StorageResource


class PartitionedParquetIOManager(dg.ConfigurableIOManager):
    """Stores each asset partition as one Parquet file, replaced atomically on re-materialization.

    The file is ``ROOT/<area>/<asset name>/date=<partition key>/part-0.parquet`` (hive layout).
    Reports ``dagster/row_count`` and ``path`` on every output.

    Attributes:
        storage: The storage root.
        area: Top folder under the root: ``tables`` for published tables, ``staging`` for
            internal ones.
    """

    storage: dg.ResourceDependency[StorageResource]
    area: str = "tables"

    def handle_output(self, context: dg.OutputContext, obj: pa.Table) -> None:
        """Write ``obj`` as the partition's file; raises ``TypeError`` for non-Arrow outputs."""
        if not isinstance(obj, pa.Table):
            raise TypeError(f"expected a pyarrow.Table for {context.asset_key}, got {type(obj)}")
        name = context.asset_key.path[-1]
        uri = self.storage.get().replace_partition(name, context.partition_key, obj, self.area)
        context.add_output_metadata(
            {"dagster/row_count": obj.num_rows, "path": dg.MetadataValue.path(uri)}
        )

    def load_input(self, context: dg.InputContext) -> pa.Table:
        """Read the upstream asset's partition."""
        name = context.asset_key.path[-1]
        return self.storage.get().read_partition(name, context.asset_partition_key, self.area)
