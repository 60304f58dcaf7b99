// all-MiniLM-L6-v2 sentence embeddings with ONNX Runtime (model.onnx, int64 inputs [1, 128]).
// pod 'onnxruntime-objc', '1.31.1'  (or SwiftPM onnxruntime-swift-package-manager 1.31.1)
import Foundation
import onnxruntime_objc

final class OnnxRuntimeEmbedder {
  static let seqLen = 128
  static let dim = 384
  private let env: ORTEnv
  private let session: ORTSession

  init(threads: Int32 = 4) throws {
    env = try ORTEnv(loggingLevel: .warning)
    let options = try ORTSessionOptions()
    try options.setIntraOpNumThreads(threads)
    let path = Bundle.main.path(forResource: "model", ofType: "onnx")!
    session = try ORTSession(env: env, modelPath: path, sessionOptions: options)
  }

  private func tensor(_ values: [Int64]) throws -> ORTValue {
    var values = values
    let data = NSMutableData(bytes: &values, length: values.count * MemoryLayout<Int64>.size)
    return try ORTValue(tensorData: data, elementType: .int64, shape: [1, NSNumber(value: Self.seqLen)])
  }

  /// Ids from the model's tokenizer, padded to seqLen; returns sentence_embedding (float32 [1, 384]).
  func embed(inputIds: [Int64], attentionMask: [Int64], tokenTypeIds: [Int64]) throws -> [Float] {
    let outputs = try session.run(
      withInputs: [
        "input_ids": try tensor(inputIds),
        "attention_mask": try tensor(attentionMask),
        "token_type_ids": try tensor(tokenTypeIds),
      ],
      outputNames: ["sentence_embedding"],
      runOptions: nil)
    let data = try outputs["sentence_embedding"]!.tensorData() as Data
    return data.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
  }
}
