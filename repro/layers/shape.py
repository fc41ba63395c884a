"""Layers that route or reshape blobs: Concat, Slice, Split, Silence, Eltwise, Flatten, Reshape."""
from __future__ import annotations

import torch

from .base import CaffeLayer, canonical_axis, count, register


@register("Concat")
class Concat(CaffeLayer):
    """Caffe's ConcatLayer along ``axis`` (or the legacy ``concat_dim``)."""

    min_bottoms, max_bottoms = 1, None

    def setup(self, bottom_shapes):
        cp = self.param.concat_param
        axis = cp.concat_dim if cp.HasField("concat_dim") else cp.axis
        self.axis = canonical_axis(self.param, axis, len(bottom_shapes[0]))

    def out_shapes(self, bottom_shapes):
        first = list(bottom_shapes[0])
        for s in bottom_shapes[1:]:
            if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first)) if i != self.axis):
                raise self.error(f"bottom shapes {bottom_shapes} differ outside the concat axis {self.axis}")
            first[self.axis] += s[self.axis]
        return [tuple(first)]

    def forward(self, *bottoms):
        return (torch.cat(bottoms, dim=self.axis),)


@register("Slice")
class Slice(CaffeLayer):
    """Caffe's SliceLayer: cut ``axis`` at ``slice_point``s, or into equal parts, one per top."""

    min_tops, max_tops = 1, None

    def setup(self, bottom_shapes):
        sp = self.param.slice_param
        axis = sp.slice_dim if sp.HasField("slice_dim") else sp.axis
        self.axis = canonical_axis(self.param, axis, len(bottom_shapes[0]))
        self.points = [int(p) for p in sp.slice_point]
        if self.points and len(self.points) != len(self.param.top) - 1:
            raise self.error(f"{len(self.points)} slice_point(s) for {len(self.param.top)} tops; need tops - 1")

    def _sizes(self, dim):
        if self.points:
            cuts = [0] + self.points + [dim]
            sizes = [b - a for a, b in zip(cuts, cuts[1:])]
            if min(sizes) <= 0:
                raise self.error(f"slice points {self.points} must increase within (0, {dim})")
            return sizes
        n = len(self.param.top)
        if dim % n:
            raise self.error(f"axis {self.axis} of size {dim} does not split into {n} equal parts")
        return [dim // n] * n

    def out_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        return [shape[: self.axis] + (n,) + shape[self.axis + 1:] for n in self._sizes(shape[self.axis])]

    def forward(self, x):
        return tuple(torch.split(x, self._sizes(x.shape[self.axis]), dim=self.axis))


@register("Split")
class Split(CaffeLayer):
    """Caffe's SplitLayer: every top is the bottom; their gradients add up (autograd does the sum)."""

    min_tops, max_tops = 1, None

    def out_shapes(self, bottom_shapes):
        return [bottom_shapes[0]] * len(self.param.top)

    def forward(self, x):
        return (x,) * len(self.param.top)


@register("Silence")
class Silence(CaffeLayer):
    """Caffe's SilenceLayer: consumes blobs so they are not net outputs; no tops."""

    min_bottoms, max_bottoms = 1, None
    min_tops, max_tops = 0, 0

    def out_shapes(self, bottom_shapes):
        return []

    def forward(self, *bottoms):
        return ()


@register("Eltwise")
class Eltwise(CaffeLayer):
    """Caffe's EltwiseLayer: SUM (with optional coeff per bottom), PROD, MAX (gradient to the bottom holding
    the maximum: bottom 1 wins a tie with bottom 0, later bottoms must be strictly greater, as in
    ``EltwiseLayer::Forward_cpu``)."""

    min_bottoms, max_bottoms = 2, None

    def setup(self, bottom_shapes):
        ep = self.param.eltwise_param
        self.op = ep.DESCRIPTOR.fields_by_name["operation"].enum_type.values_by_number[ep.operation].name
        self.coeff = [float(c) for c in ep.coeff]
        if self.coeff and self.op != "SUM":
            raise self.error("Eltwise layer only takes coefficients for summation")
        if self.coeff and len(self.coeff) != len(bottom_shapes):
            raise self.error(f"{len(self.coeff)} coeff(s) for {len(bottom_shapes)} bottoms; give one per bottom")

    def out_shapes(self, bottom_shapes):
        if any(tuple(s) != tuple(bottom_shapes[0]) for s in bottom_shapes):
            raise self.error(f"all bottoms must have the same shape, got {bottom_shapes}")
        return [bottom_shapes[0]]

    def forward(self, *bottoms):
        if self.op == "SUM":
            coeff = self.coeff or [1.0] * len(bottoms)
            top = bottoms[0] * coeff[0]
            for c, b in zip(coeff[1:], bottoms[1:]):
                top = top + (b * c if c != 1.0 else b)
            return (top,)
        if self.op == "PROD":
            top = bottoms[0] * bottoms[1]
            for b in bottoms[2:]:
                top = top * b
            return (top,)
        top = torch.where(bottoms[0] > bottoms[1], bottoms[0], bottoms[1])
        for b in bottoms[2:]:
            top = torch.where(b > top, b, top)
        return (top,)


@register("Flatten")
class Flatten(CaffeLayer):
    """Caffe's FlattenLayer: merge axes [axis, end_axis] into one."""

    def setup(self, bottom_shapes):
        fp = self.param.flatten_param
        n = len(bottom_shapes[0])
        self.start = canonical_axis(self.param, fp.axis, n)
        self.end = canonical_axis(self.param, fp.end_axis, n)

    def out_shapes(self, bottom_shapes):
        s = bottom_shapes[0]
        return [tuple(s[: self.start]) + (count(s, self.start, self.end + 1),) + tuple(s[self.end + 1:])]

    def forward(self, x):
        return (x.reshape(self.out_shapes([tuple(x.shape)])[0]),)


@register("Reshape")
class Reshape(CaffeLayer):
    """Caffe's ReshapeLayer: ``shape`` replaces axes [axis, axis + num_axes); a 0 copies the bottom's dim,
    one -1 is inferred from the count."""

    def setup(self, bottom_shapes):
        rp = self.param.reshape_param
        self.dims = [int(d) for d in rp.shape.dim]
        if self.dims.count(-1) > 1:
            raise self.error("new shape contains multiple -1 dims; at most one can be inferred")
        if any(d < -1 for d in self.dims):
            raise self.error(f"shape dims must be >= -1, got {self.dims}")
        self.axis, self.num_axes = int(rp.axis), int(rp.num_axes)
        if self.num_axes < -1:
            raise self.error(f"num_axes must be >= -1, got {self.num_axes}")

    def out_shapes(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        start = self.axis if self.axis >= 0 else len(s) + self.axis + 1
        if not 0 <= start <= len(s):
            raise self.error(f"axis {self.axis} out of range for a {len(s)}-D bottom")
        end = len(s) if self.num_axes == -1 else start + self.num_axes
        if end > len(s):
            raise self.error(f"axis {self.axis} + num_axes {self.num_axes} exceeds the bottom's {len(s)} axes")
        new = []
        for i, d in enumerate(self.dims):
            if d == 0:
                if start + i >= len(s):
                    raise self.error(f"dim {i} copies axis {start + i}, which the bottom {s} does not have")
                new.append(s[start + i])
            else:
                new.append(d)
        if -1 in new:
            known = count(s[:start]) * count(s[end:]) * count([d for d in new if d != -1])
            if known == 0 or count(s) % known:
                raise self.error(f"cannot infer the -1 dim of {self.dims} for bottom shape {s}")
            new[new.index(-1)] = count(s) // known
        top = s[:start] + tuple(new) + s[end:]
        if count(top) != count(s):
            raise self.error(f"output count {count(top)} (shape {top}) must match the input count {count(s)} "
                             f"(shape {s})")
        return [top]

    def forward(self, x):
        return (x.reshape(self.out_shapes([tuple(x.shape)])[0]),)
